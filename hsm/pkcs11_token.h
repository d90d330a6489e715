// An opened, logged-in PKCS#11 token: the loaded module plus a bounded pool
// of sessions on the token found by label. The one entry point the server
// uses, so that no PKCS#11 type or call appears outside hsm/.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_HSM_PKCS11_TOKEN_H_
#define CARDVAULT_HSM_PKCS11_TOKEN_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "hsm/pkcs11_module.h"
#include "hsm/session_pool.h"
#include "server/crypto/secret_bytes.h"

namespace cardvault::hsm {

class Pkcs11Token {
 public:
  struct Options {
    // Path of the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so.
    std::string module_path;
    // CKA_LABEL of the token (CK_TOKEN_INFO.label).
    std::string token_label;
    // Bound of the session pool; see SessionPool::Options.
    size_t max_sessions = 4;
    absl::Duration acquire_timeout = absl::Seconds(10);
  };

  // Loads the module, finds the token and logs in with `pin` (wiped after).
  // Errors name the module path or token label and the PKCS#11 code.
  static absl::StatusOr<std::unique_ptr<Pkcs11Token>> Open(
      const Options& options, crypto::SecretBytes pin);

  const SessionPool* sessions() const { return sessions_.get(); }

  // OK if a live, logged-in session can be had now; UNAVAILABLE (naming the
  // PKCS#11 code) while the device fails. Heals the pool as a side effect.
  absl::Status Probe() const { return sessions_->Acquire().status(); }

 private:
  Pkcs11Token(std::unique_ptr<Pkcs11Module> module,
              std::unique_ptr<SessionPool> sessions)
      : module_(std::move(module)), sessions_(std::move(sessions)) {}

  // Declared first so that it is destroyed last, after every session.
  std::unique_ptr<Pkcs11Module> module_;
  std::unique_ptr<SessionPool> sessions_;
};

}  // namespace cardvault::hsm

#endif  // CARDVAULT_HSM_PKCS11_TOKEN_H_
