// A PKCS#11 library loaded by path and initialised for multi-threaded use.
//
// Thread safety: thread-safe. The module is initialised with
// CKF_OS_LOCKING_OK; sessions must still not be shared between threads (see
// SessionPool).
#ifndef CARDVAULT_HSM_PKCS11_MODULE_H_
#define CARDVAULT_HSM_PKCS11_MODULE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hsm/pkcs11.h"

namespace cardvault::hsm {

class Pkcs11Module {
 public:
  // dlopen()s `path`, calls C_GetFunctionList and C_Initialize. Errors name
  // the path and the failing step.
  static absl::StatusOr<std::unique_ptr<Pkcs11Module>> Load(
      absl::string_view path);

  Pkcs11Module(const Pkcs11Module&) = delete;
  Pkcs11Module& operator=(const Pkcs11Module&) = delete;
  // C_Finalize and dlclose. All sessions must be closed first.
  ~Pkcs11Module();

  CK_FUNCTION_LIST* functions() const { return functions_; }

  // The slot whose initialised token carries `label` (blank-padded in
  // CK_TOKEN_INFO). NOT_FOUND if none, FAILED_PRECONDITION if several.
  absl::StatusOr<CK_SLOT_ID> FindSlotByTokenLabel(
      absl::string_view label) const;

 private:
  Pkcs11Module(void* library, CK_FUNCTION_LIST* functions);

  void* const library_;
  CK_FUNCTION_LIST* const functions_;
};

}  // namespace cardvault::hsm

#endif  // CARDVAULT_HSM_PKCS11_MODULE_H_
