#include "server/crypto/crl_check.h"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
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
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using File = std::unique_ptr<FILE, FileCloser>;
using Cert = std::unique_ptr<X509, X509Free>;
using Crl = std::unique_ptr<X509_CRL, CrlFree>;

std::string Subject(const X509* cert) {
  char buf[256];
  X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof(buf));
  return buf;
}

std::optional<absl::Time> TimeOf(const ASN1_TIME* t) {
  if (t == nullptr) return std::nullopt;
  struct tm tm = {};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return std::nullopt;
  return absl::FromTM(tm, absl::UTCTimeZone());
}

std::string SerialHex(const X509* cert) {
  const ASN1_INTEGER* serial = X509_get0_serialNumber(cert);
  // Uppercase, as audit records spell serials.
  return absl::AsciiStrToUpper(absl::BytesToHexString(absl::string_view(
      reinterpret_cast<const char*>(ASN1_STRING_get0_data(serial)),
      static_cast<size_t>(ASN1_STRING_length(serial)))));
}

}  // namespace

struct ClientCaSet::Entry {
  Cert ca;
  std::string subject;
  Crl crl;  // the newest the CA signed; null if none
  std::optional<absl::Time> this_update;
  std::optional<absl::Time> next_update;
};

ClientCaSet::ClientCaSet(std::vector<std::unique_ptr<Entry>> entries)
    : entries_(std::move(entries)) {}
ClientCaSet::~ClientCaSet() = default;

absl::StatusOr<std::unique_ptr<ClientCaSet>> ClientCaSet::Load(
    const std::string& ca_file, const std::string& crl_dir) {
  File in(std::fopen(ca_file.c_str(), "r"));
  if (in == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read CA file ", ca_file));
  }
  std::vector<std::unique_ptr<Entry>> entries;
  while (X509* x = PEM_read_X509(in.get(), nullptr, nullptr, nullptr)) {
    auto e = std::make_unique<Entry>();
    e->ca.reset(x);
    e->subject = Subject(x);
    entries.push_back(std::move(e));
  }
  if (entries.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("no CA certificate in ", ca_file));
  }
  for (std::unique_ptr<Entry>& e : entries) {
    X509_NAME* name = X509_get_subject_name(e->ca.get());
    EVP_PKEY* key = X509_get0_pubkey(e->ca.get());
    const std::string base =
        absl::StrFormat("%s/%08lx.r", crl_dir,
                        X509_NAME_hash_ex(name, nullptr, nullptr, nullptr));
    for (int i = 0; i < kMaxCrlFilesPerCa; ++i) {
      File f(std::fopen(absl::StrCat(base, i).c_str(), "r"));
      if (f == nullptr) break;
      Crl crl(PEM_read_X509_CRL(f.get(), nullptr, nullptr, nullptr));
      if (crl == nullptr || key == nullptr ||
          X509_NAME_cmp(X509_CRL_get_issuer(crl.get()), name) != 0 ||
          X509_CRL_verify(crl.get(), key) != 1) {
        continue;
      }
      std::optional<absl::Time> this_update =
          TimeOf(X509_CRL_get0_lastUpdate(crl.get()));
      if (!this_update.has_value()) continue;
      if (e->crl == nullptr || *this_update > *e->this_update) {
        e->this_update = this_update;
        e->next_update = TimeOf(X509_CRL_get0_nextUpdate(crl.get()));
        e->crl = std::move(crl);
      }
    }
  }
  return std::unique_ptr<ClientCaSet>(new ClientCaSet(std::move(entries)));
}

absl::Status ClientCaSet::CheckCoverage(absl::Time now) const {
  for (const std::unique_ptr<Entry>& e : entries_) {
    if (e->crl == nullptr || !e->next_update.has_value() ||
        *e->this_update > now || *e->next_update <= now) {
      return absl::FailedPreconditionError(
          absl::StrCat("no current CRL signed by client CA \"", e->subject,
                       "\"; without it revocation would not be enforced"));
    }
  }
  return absl::OkStatus();
}

absl::Status ClientCaSet::CheckCertificate(absl::string_view leaf_pem,
                                           absl::Time now) const {
  std::unique_ptr<BIO, BioFree> bio(
      BIO_new_mem_buf(leaf_pem.data(), static_cast<int>(leaf_pem.size())));
  Cert leaf(bio == nullptr
                ? nullptr
                : PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (leaf == nullptr) {
    return absl::UnauthenticatedError("client certificate does not parse");
  }
  // Up the chain: each certificate against its issuer's CRL, to a root.
  X509* cert = leaf.get();
  for (int depth = 0; depth < kMaxChainDepth; ++depth) {
    const Entry* issuer = nullptr;
    for (const std::unique_ptr<Entry>& e : entries_) {
      EVP_PKEY* key = X509_get0_pubkey(e->ca.get());
      if (X509_check_issued(e->ca.get(), cert) == X509_V_OK && key != nullptr &&
          X509_verify(cert, key) == 1) {
        issuer = e.get();
        break;
      }
    }
    const std::string who = absl::StrCat(
        depth == 0 ? "client certificate" : "its CA certificate", " serial ",
        SerialHex(cert),
        issuer == nullptr ? ""
                          : absl::StrCat(" of CA \"", issuer->subject, "\""));
    if (issuer == nullptr) {
      return absl::UnauthenticatedError(
          absl::StrCat(who,
                       " refused: not issued by a current client CA, so its "
                       "revocation cannot be checked"));
    }
    if (issuer->crl == nullptr) {
      return absl::UnauthenticatedError(
          absl::StrCat(who, " refused: the CA has no CRL"));
    }
    if (!issuer->next_update.has_value() || *issuer->next_update <= now) {
      return absl::UnauthenticatedError(
          absl::StrCat(who, " refused: the CA's CRL expired at ",
                       issuer->next_update.has_value()
                           ? absl::FormatTime(*issuer->next_update)
                           : "(no nextUpdate)"));
    }
    if (*issuer->this_update > now) {
      return absl::UnauthenticatedError(
          absl::StrCat(who, " refused: the CA's CRL is not yet valid"));
    }
    X509_REVOKED* revoked = nullptr;
    if (X509_CRL_get0_by_serial(issuer->crl.get(), &revoked,
                                X509_get0_serialNumber(cert)) == 1) {
      return absl::UnauthenticatedError(absl::StrCat(who, " is revoked"));
    }
    if (X509_check_issued(issuer->ca.get(), issuer->ca.get()) == X509_V_OK) {
      return absl::OkStatus();  // a root: the chain is checked
    }
    cert = issuer->ca.get();
  }
  return absl::UnauthenticatedError(
      "client certificate chain is longer than the server checks");
}

std::vector<ClientCaSet::CaCrl> ClientCaSet::Cas() const {
  std::vector<CaCrl> out;
  for (const std::unique_ptr<Entry>& e : entries_) {
    out.push_back({e->subject, e->this_update, e->next_update});
  }
  return out;
}

absl::Status CheckCrlCoverage(const std::string& ca_file,
                              const std::string& crl_dir, absl::Time now) {
  absl::StatusOr<std::unique_ptr<ClientCaSet>> set =
      ClientCaSet::Load(ca_file, crl_dir);
  if (!set.ok()) return set.status();
  return (*set)->CheckCoverage(now);
}

}  // namespace cardvault::crypto
