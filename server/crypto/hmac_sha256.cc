#include "server/crypto/hmac_sha256.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

namespace cardvault::crypto {

void HmacSha256::CtxFree::operator()(EVP_MAC_CTX* ctx) const {
  EVP_MAC_CTX_free(ctx);
}

absl::StatusOr<std::unique_ptr<HmacSha256>> HmacSha256::Create(
    SecretBytes key) {
  if (key.size() < kMinKeySize) {
    return absl::InvalidArgumentError("HMAC key must be at least 256 bits");
  }
  EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  if (mac == nullptr) return absl::InternalError("HMAC is not available");
  Ctx ctx(EVP_MAC_CTX_new(mac));
  EVP_MAC_free(mac);  // the context holds its own reference
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end()};
  if (ctx == nullptr ||
      EVP_MAC_init(ctx.get(), key.data(), key.size(), params) != 1) {
    return absl::InternalError("cannot key HMAC-SHA256");
  }
  return std::unique_ptr<HmacSha256>(new HmacSha256(std::move(ctx)));
}

void HmacSha256::ComputeInto(std::initializer_list<absl::string_view> parts,
                             unsigned char* mac) const {
  // A pooled context restarts under its key (EVP_MAC_init without a key).
  Ctx ctx = pool_.Take();
  bool ok = ctx != nullptr
                ? EVP_MAC_init(ctx.get(), nullptr, 0, nullptr) == 1
                : (ctx = Ctx(EVP_MAC_CTX_dup(keyed_.get()))) != nullptr;
  size_t len = 0;
  for (absl::string_view p : parts) {
    ok = ok && EVP_MAC_update(ctx.get(),
                              reinterpret_cast<const unsigned char*>(p.data()),
                              p.size()) == 1;
  }
  ok = ok && EVP_MAC_final(ctx.get(), mac, &len, kMacSize) == 1 &&
       len == kMacSize;
  // Only allocation failure gets here: no MAC rather than a wrong one.
  if (!ok) OPENSSL_die("HMAC-SHA256 failed", __FILE__, __LINE__);
  pool_.Put(std::move(ctx));
}

std::string HmacSha256::Compute(absl::string_view data) const {
  std::string mac(kMacSize, '\0');
  ComputeInto({data}, reinterpret_cast<unsigned char*>(mac.data()));
  return mac;
}

std::string HmacSha256::ComputeSecret(
    std::initializer_list<absl::string_view> parts) const {
  // Fed part by part: the card data is never assembled in a buffer.
  std::string mac(kMacSize, '\0');
  ComputeInto(parts, reinterpret_cast<unsigned char*>(mac.data()));
  return mac;
}

bool HmacSha256::Verify(absl::string_view data, absl::string_view mac) const {
  if (mac.size() != kMacSize) return false;
  const std::string expected = Compute(data);
  return CRYPTO_memcmp(expected.data(), mac.data(), kMacSize) == 0;
}

}  // namespace cardvault::crypto
