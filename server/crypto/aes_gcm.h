// AES-256-GCM with the key in host memory (OpenSSL EVP); layout in aead.h.
//
// Thread safety: thread-safe; every call uses its own cipher context.
#ifndef CARDVAULT_SERVER_CRYPTO_AES_GCM_H_
#define CARDVAULT_SERVER_CRYPTO_AES_GCM_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/crypto/aead.h"
#include "server/crypto/secret_bytes.h"

typedef struct evp_cipher_st EVP_CIPHER;

namespace cardvault::crypto {

class AesGcm : public Aead {
 public:
  static constexpr size_t kKeySize = 32;

  // Fails with INVALID_ARGUMENT unless `key` is 32 bytes.
  static absl::StatusOr<std::unique_ptr<AesGcm>> Create(SecretBytes key);

  AesGcm(const AesGcm&) = delete;
  AesGcm& operator=(const AesGcm&) = delete;
  ~AesGcm() override;

  absl::StatusOr<std::string> Seal(absl::string_view plaintext,
                                   absl::string_view aad) const override;
  absl::StatusOr<SecretBytes> Open(absl::string_view sealed,
                                   absl::string_view aad) const override;

 private:
  AesGcm(SecretBytes key, EVP_CIPHER* cipher);

  const SecretBytes key_;
  EVP_CIPHER* const cipher_;  // owned; fetched once, immutable
};

}  // namespace cardvault::crypto

#endif  // CARDVAULT_SERVER_CRYPTO_AES_GCM_H_
