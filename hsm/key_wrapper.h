// Data-key custody backed by a key-encryption key that never leaves the HSM.
//
// Thread safety: implementations are thread-safe.
#ifndef CARDVAULT_HSM_KEY_WRAPPER_H_
#define CARDVAULT_HSM_KEY_WRAPPER_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/crypto/secret_bytes.h"

namespace cardvault::hsm {

class KeyWrapper {
 public:
  virtual ~KeyWrapper() = default;

  // Generates a fresh AES-256 data key inside the HSM and returns it only in
  // wrapped form (under the KEK); the plain key never leaves the HSM here.
  virtual absl::StatusOr<std::string> GenerateWrappedDataKey() const = 0;

  // Unwraps `wrapped` into locked, wiped-on-release host memory.
  virtual absl::StatusOr<crypto::SecretBytes> UnwrapDataKey(
      absl::string_view wrapped) const = 0;

  // Label of the KEK, recorded beside every wrapped key.
  virtual absl::string_view kek_label() const = 0;
};

}  // namespace cardvault::hsm

#endif  // CARDVAULT_HSM_KEY_WRAPPER_H_
