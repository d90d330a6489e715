#include "server/crypto/certificate_info.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>

#include "absl/strings/escaping.h"

namespace cardvault::crypto {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct BnFree {
  void operator()(BIGNUM* b) const { BN_free(b); }
};
struct OpenSslFree {
  void operator()(char* p) const { OPENSSL_free(p); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

}  // namespace

absl::Status CheckKeyPair(absl::string_view cert_pem,
                          absl::string_view key_pem) {
  std::unique_ptr<BIO, BioFree> cert_bio(
      BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())));
  std::unique_ptr<X509, X509Free> cert(
      cert_bio ? PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr)
               : nullptr);
  std::unique_ptr<BIO, BioFree> key_bio(
      BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
  std::unique_ptr<EVP_PKEY, PkeyFree> key(
      key_bio
          ? PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr)
          : nullptr);
  if (cert == nullptr || key == nullptr ||
      X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        "certificate and private key do not parse or do not match");
  }
  return absl::OkStatus();
}

absl::StatusOr<CertificateInfo> ParseCertificateInfo(absl::string_view pem) {
  std::unique_ptr<BIO, BioFree> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::unique_ptr<X509, X509Free> cert(
      bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
  if (cert == nullptr) {
    return absl::InvalidArgumentError("peer certificate does not parse");
  }
  CertificateInfo info;
  std::unique_ptr<BIGNUM, BnFree> serial(
      ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert.get()), nullptr));
  std::unique_ptr<char, OpenSslFree> hex(serial ? BN_bn2hex(serial.get())
                                                : nullptr);
  if (hex == nullptr) {
    return absl::InvalidArgumentError("peer certificate serial unreadable");
  }
  info.serial_hex = hex.get();
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(cert.get(), EVP_sha256(), digest, &len) != 1) {
    return absl::InternalError("certificate digest failed");
  }
  info.sha256_hex = absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), len));
  return info;
}

}  // namespace cardvault::crypto
