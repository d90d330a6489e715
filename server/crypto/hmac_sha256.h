// HMAC-SHA256 under a key held in a SecretBytes (OpenSSL).
//
// The key is set once, in a keyed OpenSSL context: fetching the algorithm
// and keying a context per MAC cost more than the MAC itself (the audit
// writer makes one per record). A MAC takes a context from a small pool
// (made as a copy of the keyed one when none is free) and re-initialises it
// under the same key. OpenSSL keeps the key in its heap with the derived pad
// states, and wipes both when a context is freed.
//
// Thread safety: thread-safe; the keyed context is only read (copied), and
// a pooled context is used by one MAC at a time.
#ifndef CARDVAULT_SERVER_CRYPTO_HMAC_SHA256_H_
#define CARDVAULT_SERVER_CRYPTO_HMAC_SHA256_H_

#include <cstddef>
#include <initializer_list>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/crypto/context_pool.h"
#include "server/crypto/secret_bytes.h"

typedef struct evp_mac_ctx_st EVP_MAC_CTX;

namespace cardvault::crypto {

class HmacSha256 {
 public:
  static constexpr size_t kMacSize = 32;
  static constexpr size_t kMinKeySize = 32;

  // INVALID_ARGUMENT for keys shorter than 256 bits.
  static absl::StatusOr<std::unique_ptr<HmacSha256>> Create(SecretBytes key);

  // The 32-byte MAC of `data`.
  std::string Compute(absl::string_view data) const;

  // The MAC of the concatenation of `parts`, fed to the MAC one by one, so
  // that inputs holding card data are never copied into another buffer.
  std::string ComputeSecret(
      std::initializer_list<absl::string_view> parts) const;

  // Constant-time comparison of `mac` with the MAC of `data`.
  bool Verify(absl::string_view data, absl::string_view mac) const;

 private:
  struct CtxFree {
    void operator()(EVP_MAC_CTX* ctx) const;
  };
  using Ctx = std::unique_ptr<EVP_MAC_CTX, CtxFree>;

  explicit HmacSha256(Ctx keyed) : keyed_(std::move(keyed)) {}

  // Writes the MAC of the concatenation of `parts` to `mac` (kMacSize).
  void ComputeInto(std::initializer_list<absl::string_view> parts,
                   unsigned char* mac) const;

  const Ctx keyed_;
  mutable ContextPool<Ctx> pool_;
};

}  // namespace cardvault::crypto

#endif  // CARDVAULT_SERVER_CRYPTO_HMAC_SHA256_H_
