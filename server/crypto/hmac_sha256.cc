#include "server/crypto/hmac_sha256.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstring>

namespace cardvault::crypto {

absl::StatusOr<std::unique_ptr<HmacSha256>> HmacSha256::Create(
    SecretBytes key) {
  if (key.size() < kMinKeySize) {
    return absl::InvalidArgumentError("HMAC key must be at least 256 bits");
  }
  return std::unique_ptr<HmacSha256>(new HmacSha256(std::move(key)));
}

std::string HmacSha256::Compute(absl::string_view data) const {
  std::string mac(kMacSize, '\0');
  unsigned int len = 0;
  HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(),
       reinterpret_cast<unsigned char*>(mac.data()), &len);
  return mac;
}

std::string HmacSha256::ComputeSecret(
    std::initializer_list<absl::string_view> parts) const {
  size_t total = 0;
  for (absl::string_view p : parts) total += p.size();
  SecretBytes input(total);
  size_t at = 0;
  for (absl::string_view p : parts) {
    if (!p.empty()) std::memcpy(input.data() + at, p.data(), p.size());
    at += p.size();
  }
  return Compute(input.view());
}

bool HmacSha256::Verify(absl::string_view data, absl::string_view mac) const {
  if (mac.size() != kMacSize) return false;
  const std::string expected = Compute(data);
  return CRYPTO_memcmp(expected.data(), mac.data(), kMacSize) == 0;
}

}  // namespace cardvault::crypto
