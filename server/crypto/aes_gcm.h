// AES-256-GCM authenticated encryption with random 96-bit nonces (OpenSSL
// EVP).
//
// Sealed layout, byte by byte:
//   [0, 12)        nonce, fresh from the CSPRNG for every Seal
//   [12, 12+n)     ciphertext, n = plaintext length
//   [12+n, 28+n)   GCM tag (128 bits)
//
// Thread safety: thread-safe; every call uses its own cipher context.
#ifndef CARDVAULT_SERVER_CRYPTO_AES_GCM_H_
#define CARDVAULT_SERVER_CRYPTO_AES_GCM_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/crypto/secret_bytes.h"

typedef struct evp_cipher_st EVP_CIPHER;

namespace cardvault::crypto {

class AesGcm {
 public:
  static constexpr size_t kKeySize = 32;
  static constexpr size_t kNonceSize = 12;
  static constexpr size_t kTagSize = 16;
  static constexpr size_t kOverhead = kNonceSize + kTagSize;

  // Fails with INVALID_ARGUMENT unless `key` is 32 bytes.
  static absl::StatusOr<std::unique_ptr<AesGcm>> Create(SecretBytes key);

  AesGcm(const AesGcm&) = delete;
  AesGcm& operator=(const AesGcm&) = delete;
  ~AesGcm();

  // Returns nonce || ciphertext || tag. `aad` must not be empty: every
  // caller binds its context (record format, key id, token).
  absl::StatusOr<std::string> Seal(absl::string_view plaintext,
                                   absl::string_view aad) const;

  // Inverse of Seal. Any change to `sealed` or `aad` gives INVALID_ARGUMENT
  // ("authentication failed") and no plaintext.
  absl::StatusOr<SecretBytes> Open(absl::string_view sealed,
                                   absl::string_view aad) const;

 private:
  AesGcm(SecretBytes key, EVP_CIPHER* cipher);

  const SecretBytes key_;
  EVP_CIPHER* const cipher_;  // owned; fetched once, immutable
};

}  // namespace cardvault::crypto

#endif  // CARDVAULT_SERVER_CRYPTO_AES_GCM_H_
