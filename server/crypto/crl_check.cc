#include "server/crypto/crl_check.h"

#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cstdio>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace cardvault::crypto {
namespace {

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct CrlFree {
  void operator()(X509_CRL* c) const { X509_CRL_free(c); }
};
using File = std::unique_ptr<FILE, FileCloser>;
using Cert = std::unique_ptr<X509, X509Free>;
using Crl = std::unique_ptr<X509_CRL, CrlFree>;

// OpenSSL's hash-dir lookup tries .r0, .r1, ... until a file is missing.
constexpr int kMaxCrlFilesPerCa = 16;

std::string Subject(X509* cert) {
  char buf[256];
  X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof(buf));
  return buf;
}

}  // namespace

absl::Status CheckCrlCoverage(const std::string& ca_file,
                              const std::string& crl_dir, absl::Time now) {
  File in(std::fopen(ca_file.c_str(), "r"));
  if (in == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read CA file ", ca_file));
  }
  std::vector<Cert> cas;
  while (X509* x = PEM_read_X509(in.get(), nullptr, nullptr, nullptr)) {
    cas.emplace_back(x);
  }
  if (cas.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("no CA certificate in ", ca_file));
  }
  time_t now_t = absl::ToTimeT(now);
  for (const Cert& ca : cas) {
    const std::string base =
        absl::StrFormat("%s/%08lx.r", crl_dir,
                        X509_NAME_hash_ex(X509_get_subject_name(ca.get()),
                                          nullptr, nullptr, nullptr));
    bool covered = false;
    for (int i = 0; i < kMaxCrlFilesPerCa && !covered; ++i) {
      File f(std::fopen(absl::StrCat(base, i).c_str(), "r"));
      if (f == nullptr) break;
      Crl crl(PEM_read_X509_CRL(f.get(), nullptr, nullptr, nullptr));
      if (crl == nullptr) continue;
      EVP_PKEY* key = X509_get0_pubkey(ca.get());
      const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl.get());
      covered = key != nullptr && X509_CRL_verify(crl.get(), key) == 1 &&
                next != nullptr && X509_cmp_time(next, &now_t) > 0;
    }
    if (!covered) {
      return absl::FailedPreconditionError(absl::StrCat(
          "no current CRL signed by client CA \"", Subject(ca.get()), "\" at ",
          base, "0; without it revocation would not be enforced"));
    }
  }
  return absl::OkStatus();
}

}  // namespace cardvault::crypto
