// Authenticated encryption with associated data, whatever holds the key:
// host memory (AesGcm) or an HSM (hsm::Pkcs11Aead). Both produce the same
// bytes for the same key, so a record sealed by one opens with the other.
//
// Sealed layout, byte by byte:
//   [0, 12)        nonce, fresh from a CSPRNG for every Seal
//   [12, 12+n)     ciphertext, n = plaintext length
//   [12+n, 28+n)   GCM tag (128 bits)
//
// Thread safety: implementations are thread-safe.
#ifndef CARDVAULT_SERVER_CRYPTO_AEAD_H_
#define CARDVAULT_SERVER_CRYPTO_AEAD_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/crypto/secret_bytes.h"

namespace cardvault::crypto {

class Aead {
 public:
  static constexpr size_t kNonceSize = 12;
  static constexpr size_t kTagSize = 16;
  static constexpr size_t kOverhead = kNonceSize + kTagSize;

  virtual ~Aead() = default;

  // Returns nonce || ciphertext || tag. `aad` must not be empty: every
  // caller binds its context (record format, key id, token).
  virtual absl::StatusOr<std::string> Seal(absl::string_view plaintext,
                                           absl::string_view aad) const = 0;

  // Inverse of Seal. Any change to `sealed` or `aad` gives INVALID_ARGUMENT
  // ("authentication failed") and no plaintext.
  virtual absl::StatusOr<SecretBytes> Open(absl::string_view sealed,
                                           absl::string_view aad) const = 0;
};

}  // namespace cardvault::crypto

#endif  // CARDVAULT_SERVER_CRYPTO_AEAD_H_
