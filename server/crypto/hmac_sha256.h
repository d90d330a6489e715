// HMAC-SHA256 under a key held in a SecretBytes (OpenSSL).
//
// Thread safety: thread-safe; immutable after Create.
#ifndef CARDVAULT_SERVER_CRYPTO_HMAC_SHA256_H_
#define CARDVAULT_SERVER_CRYPTO_HMAC_SHA256_H_

#include <cstddef>
#include <initializer_list>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/crypto/secret_bytes.h"

namespace cardvault::crypto {

class HmacSha256 {
 public:
  static constexpr size_t kMacSize = 32;
  static constexpr size_t kMinKeySize = 32;

  // INVALID_ARGUMENT for keys shorter than 256 bits.
  static absl::StatusOr<std::unique_ptr<HmacSha256>> Create(SecretBytes key);

  // The 32-byte MAC of `data`.
  std::string Compute(absl::string_view data) const;

  // The MAC of the concatenation of `parts`, assembled in a buffer that is
  // wiped afterwards (for inputs holding card data).
  std::string ComputeSecret(
      std::initializer_list<absl::string_view> parts) const;

  // Constant-time comparison of `mac` with the MAC of `data`.
  bool Verify(absl::string_view data, absl::string_view mac) const;

 private:
  explicit HmacSha256(SecretBytes key) : key_(std::move(key)) {}
  const SecretBytes key_;
};

}  // namespace cardvault::crypto

#endif  // CARDVAULT_SERVER_CRYPTO_HMAC_SHA256_H_
