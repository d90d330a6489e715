// Key custody in the HSM: key-encryption keys (KEKs) that never leave it,
// and keys below them that leave it only wrapped. Which KEK is current is
// the caller's business (vault/kek_manager.h): every call names its KEK by
// CKA_LABEL.
//
// Thread safety: implementations are thread-safe.
#ifndef CARDVAULT_HSM_KEY_WRAPPER_H_
#define CARDVAULT_HSM_KEY_WRAPPER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/crypto/aead.h"
#include "server/crypto/secret_bytes.h"

namespace cardvault::hsm {

// Where a wrapped key is now (a KEK rotation rewraps it).
struct WrappedKeyRef {
  std::string kek_label;
  std::string wrapped;
};
using WrappedKeySource = std::function<absl::StatusOr<WrappedKeyRef>()>;

class KeyWrapper {
 public:
  virtual ~KeyWrapper() = default;

  // Generates a fresh 256-bit key inside the HSM and returns it only wrapped
  // under the KEK `kek`; the plain key never leaves the HSM here.
  virtual absl::StatusOr<std::string> GenerateWrappedKey(
      absl::string_view kek) const = 0;

  // Unwraps `wrapped` (made under `kek`) into locked, wiped-on-release host
  // memory.
  virtual absl::StatusOr<crypto::SecretBytes> UnwrapKey(
      absl::string_view kek, absl::string_view wrapped) const = 0;

  // Unwraps `wrapped` under `from` and wraps it again under `to`, inside the
  // HSM: the key is never in host memory (KEK rotation).
  virtual absl::StatusOr<std::string> RewrapKey(absl::string_view from,
                                                absl::string_view wrapped,
                                                absl::string_view to) const = 0;

  // OK if the KEK `label` exists and is fit for use (AES-256, sensitive,
  // non-extractable, wrap and unwrap only); NOT_FOUND if the token has none;
  // FAILED_PRECONDITION if it is weaker or ambiguous.
  virtual absl::Status CheckKek(absl::string_view label) const = 0;

  // Generates the KEK `label` in the HSM unless it exists; then CheckKek.
  virtual absl::Status CreateKek(absl::string_view label) const = 0;

  // Destroys the KEK `label` in the HSM; OK if there is none.
  virtual absl::Status DestroyKek(absl::string_view label) const = 0;

  // An AES-256-GCM AEAD (crypto/aead.h layout) whose key never enters host
  // memory: unwrapped inside the HSM (sensitive, non-extractable) from what
  // `source` returns, and used there with CKM_AES_GCM. `source` is asked
  // again whenever a fresh session needs the key. Fails if it does not
  // unwrap now.
  virtual absl::StatusOr<std::unique_ptr<crypto::Aead>> NewAeadInHsm(
      WrappedKeySource source) const = 0;
};

}  // namespace cardvault::hsm

#endif  // CARDVAULT_HSM_KEY_WRAPPER_H_
