#include "server/crypto/aes_gcm.h"

#include <openssl/evp.h>

#include <climits>
#include <memory>
#include <utility>

#include "server/crypto/random.h"

namespace cardvault::crypto {
namespace {

const unsigned char* Bytes(absl::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

// Bounds every length passed to EVP (which takes int).
constexpr size_t kMaxInput = 1 << 20;

}  // namespace

absl::StatusOr<std::unique_ptr<AesGcm>> AesGcm::Create(SecretBytes key) {
  if (key.size() != kKeySize) {
    return absl::InvalidArgumentError("AES-256-GCM key must be 32 bytes");
  }
  EVP_CIPHER* cipher = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  if (cipher == nullptr) {
    return absl::InternalError("OpenSSL has no AES-256-GCM");
  }
  return std::unique_ptr<AesGcm>(new AesGcm(std::move(key), cipher));
}

AesGcm::AesGcm(SecretBytes key, EVP_CIPHER* cipher)
    : key_(std::move(key)), cipher_(cipher) {}

// Pooled contexts hold their own reference to the cipher.
AesGcm::~AesGcm() { EVP_CIPHER_free(cipher_); }

void AesGcm::CtxDeleter::operator()(EVP_CIPHER_CTX* ctx) const {
  EVP_CIPHER_CTX_free(ctx);
}

AesGcm::Ctx AesGcm::TakeKeyed(bool encrypt) const {
  if (Ctx ctx = pools_[encrypt].Take(); ctx != nullptr) return ctx;
  Ctx ctx(EVP_CIPHER_CTX_new());
  if (ctx == nullptr ||
      EVP_CipherInit_ex2(ctx.get(), cipher_, key_.data(), nullptr,
                         encrypt ? 1 : 0, nullptr) != 1) {
    return nullptr;
  }
  return ctx;
}

absl::StatusOr<std::string> AesGcm::Seal(absl::string_view plaintext,
                                         absl::string_view aad) const {
  if (aad.empty()) return absl::InvalidArgumentError("empty AAD");
  if (plaintext.size() > kMaxInput || aad.size() > kMaxInput) {
    return absl::InvalidArgumentError("input too large");
  }
  std::string out(kNonceSize + plaintext.size() + kTagSize, '\0');
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  if (absl::Status s = FillPublicRandom(absl::MakeSpan(o, kNonceSize));
      !s.ok()) {
    return s;
  }
  // A new nonce on a keyed context starts a new message (key kept).
  Ctx ctx = TakeKeyed(/*encrypt=*/true);
  int len = 0;
  if (ctx == nullptr ||
      EVP_EncryptInit_ex2(ctx.get(), nullptr, nullptr, o, nullptr) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, Bytes(aad),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), o + kNonceSize, &len, Bytes(plaintext),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), o + kNonceSize + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagSize,
                          o + kNonceSize + plaintext.size()) != 1) {
    return absl::InternalError("AES-GCM seal failed");
  }
  pools_[/*encrypt=*/true].Put(std::move(ctx));
  return out;
}

absl::StatusOr<SecretBytes> AesGcm::Open(absl::string_view sealed,
                                         absl::string_view aad) const {
  if (aad.empty()) return absl::InvalidArgumentError("empty AAD");
  if (sealed.size() < kOverhead || sealed.size() > kMaxInput + kOverhead ||
      aad.size() > kMaxInput) {
    return absl::InvalidArgumentError("authentication failed");
  }
  const size_t n = sealed.size() - kOverhead;
  const unsigned char* in = Bytes(sealed);
  SecretBytes plaintext(n);
  // The tag is copied because EVP_CTRL_GCM_SET_TAG takes a non-const pointer.
  unsigned char tag[kTagSize];
  std::copy(in + kNonceSize + n, in + kNonceSize + n + kTagSize, tag);
  Ctx ctx = TakeKeyed(/*encrypt=*/false);
  int len = 0;
  if (ctx == nullptr ||
      EVP_DecryptInit_ex2(ctx.get(), nullptr, nullptr, in, nullptr) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, Bytes(aad),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), plaintext.data(), &len, in + kNonceSize,
                        static_cast<int>(n)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagSize, tag) !=
          1 ||
      EVP_DecryptFinal_ex(ctx.get(), plaintext.data() + len, &len) != 1) {
    return absl::InvalidArgumentError("authentication failed");
  }
  pools_[/*encrypt=*/false].Put(std::move(ctx));
  return plaintext;
}

}  // namespace cardvault::crypto
