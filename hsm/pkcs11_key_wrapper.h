// KeyWrapper over a PKCS#11 token: a KEK is an AES-256 token object with
// CKA_SENSITIVE=true and CKA_EXTRACTABLE=false; keys below it are wrapped
// with CKM_AES_KEY_WRAP_PAD (RFC 5649). A KEK is found by label and its
// attributes checked on every operation: handles do not outlive a lost
// login, and a substituted object with the same label but weaker attributes
// is refused.
//
// Thread safety: thread-safe; every operation takes its own pooled session.
#ifndef CARDVAULT_HSM_PKCS11_KEY_WRAPPER_H_
#define CARDVAULT_HSM_PKCS11_KEY_WRAPPER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hsm/key_wrapper.h"
#include "hsm/pkcs11.h"
#include "hsm/session_pool.h"

namespace cardvault::hsm {

// The one secret-key token object labelled `label`, NOT_FOUND if none,
// FAILED_PRECONDITION if several.
absl::StatusOr<CK_OBJECT_HANDLE> FindSecretKeyByLabel(const Session& session,
                                                      absl::string_view label);

// Unwraps `wrapped` under the KEK `kek_label` into a session object of
// `session` that is sensitive and non-extractable and may only encrypt and
// decrypt, labelled `object_label` (so that its owner can tell it from any
// other object before destroying it).
absl::StatusOr<CK_OBJECT_HANDLE> UnwrapForUse(const Session& session,
                                              absl::string_view kek_label,
                                              absl::string_view wrapped,
                                              absl::string_view object_label);

class Pkcs11KeyWrapper : public KeyWrapper {
 public:
  // `pool` must outlive the wrapper.
  static absl::StatusOr<std::unique_ptr<Pkcs11KeyWrapper>> Create(
      const SessionPool* pool);

  absl::StatusOr<std::string> GenerateWrappedKey(
      absl::string_view kek) const override;
  absl::StatusOr<crypto::SecretBytes> UnwrapKey(
      absl::string_view kek, absl::string_view wrapped) const override;
  absl::StatusOr<std::string> RewrapKey(absl::string_view from,
                                        absl::string_view wrapped,
                                        absl::string_view to) const override;
  absl::Status CheckKek(absl::string_view label) const override;
  absl::Status CreateKek(absl::string_view label) const override;
  absl::Status DestroyKek(absl::string_view label) const override;
  absl::StatusOr<std::unique_ptr<crypto::Aead>> NewAeadInHsm(
      WrappedKeySource source) const override;

 private:
  explicit Pkcs11KeyWrapper(const SessionPool* pool) : pool_(pool) {}

  const SessionPool* const pool_;
};

}  // namespace cardvault::hsm

#endif  // CARDVAULT_HSM_PKCS11_KEY_WRAPPER_H_
