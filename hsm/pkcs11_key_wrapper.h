// KeyWrapper over a PKCS#11 token: the KEK is an AES-256 token object with
// CKA_SENSITIVE=true and CKA_EXTRACTABLE=false; data keys are wrapped with
// CKM_AES_KEY_WRAP_PAD (RFC 5649).
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

class Pkcs11KeyWrapper : public KeyWrapper {
 public:
  struct Options {
    // CKA_LABEL of the KEK.
    std::string kek_label = "cardvault-kek";
    // Generate the KEK when the token has none. Off by default: production
    // KEKs come from a key ceremony, and a missing one must stop start-up.
    bool create_kek_if_missing = false;
  };

  // Finds (or creates) the KEK and refuses one that is extractable, not
  // sensitive, not AES-256, or lacks CKA_WRAP/CKA_UNWRAP (FAILED_PRECONDITION).
  // `pool` must outlive the wrapper.
  static absl::StatusOr<std::unique_ptr<Pkcs11KeyWrapper>> Create(
      const SessionPool* pool, Options options);

  absl::StatusOr<std::string> GenerateWrappedDataKey() const override;
  absl::StatusOr<crypto::SecretBytes> UnwrapDataKey(
      absl::string_view wrapped) const override;
  absl::string_view kek_label() const override { return options_.kek_label; }

  // Whether Create generated the KEK (it was missing and creation allowed).
  bool created_kek() const { return created_kek_; }

 private:
  Pkcs11KeyWrapper(const SessionPool* pool, Options options, bool created_kek);
  // The KEK's handle in `session`, found by label and checked each time:
  // handles do not outlive a lost login, and a substituted object with the
  // same label but weaker attributes is refused.
  absl::StatusOr<CK_OBJECT_HANDLE> Kek(const Session& session) const;

  const SessionPool* const pool_;
  const Options options_;
  const bool created_kek_;
};

}  // namespace cardvault::hsm

#endif  // CARDVAULT_HSM_PKCS11_KEY_WRAPPER_H_
