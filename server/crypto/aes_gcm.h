// AES-256-GCM with the key in host memory (OpenSSL EVP); layout in aead.h.
//
// Thread safety: thread-safe; a call takes a keyed cipher context from a
// small pool (or keys a new one) and uses it alone.
#ifndef CARDVAULT_SERVER_CRYPTO_AES_GCM_H_
#define CARDVAULT_SERVER_CRYPTO_AES_GCM_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/crypto/aead.h"
#include "server/crypto/context_pool.h"
#include "server/crypto/secret_bytes.h"

typedef struct evp_cipher_st EVP_CIPHER;
typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;

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
  struct CtxDeleter {
    void operator()(EVP_CIPHER_CTX* ctx) const;
  };
  using Ctx = std::unique_ptr<EVP_CIPHER_CTX, CtxDeleter>;

  AesGcm(SecretBytes key, EVP_CIPHER* cipher);

  // A context keyed for `encrypt`, ready for a new nonce: keying (the AES key
  // schedule, OpenSSL's parameter lookups) is done once per pooled context.
  // nullptr if OpenSSL fails.
  Ctx TakeKeyed(bool encrypt) const;

  const SecretBytes key_;
  EVP_CIPHER* const cipher_;  // owned; fetched once, immutable
  // [encrypt]: contexts whose last call succeeded (one that failed is freed,
  // and EVP_CIPHER_CTX_free wipes its key schedule).
  mutable ContextPool<Ctx> pools_[2];
};

}  // namespace cardvault::crypto

#endif  // CARDVAULT_SERVER_CRYPTO_AES_GCM_H_
