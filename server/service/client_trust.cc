#include "server/service/client_trust.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/util/log.h"

namespace cardvault::service {
namespace {

constexpr absl::Duration kRefusalLogInterval = absl::Seconds(10);

// Answers each handshake synchronously from the set in force.
class RevocationVerifier
    : public grpc::experimental::ExternalCertificateVerifier {
 public:
  explicit RevocationVerifier(const ClientTrust* trust) : trust_(trust) {}

  bool Verify(grpc::experimental::TlsCustomVerificationCheckRequest* request,
              std::function<void(grpc::Status)> /*callback*/,
              grpc::Status* sync_status) override {
    const grpc::string_ref pem = request->peer_cert();
    const absl::Status s =
        trust_->Check(absl::string_view(pem.data(), pem.size()));
    *sync_status = s.ok() ? grpc::Status::OK
                          : grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                                         std::string(s.message()));
    return true;
  }
  void Cancel(grpc::experimental::TlsCustomVerificationCheckRequest*) override {
  }

 private:
  const ClientTrust* const trust_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ClientTrust>> ClientTrust::Create(
    Options options) {
  if (!options.now || options.refresh <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("bad client trust options");
  }
  absl::StatusOr<std::unique_ptr<crypto::ClientCaSet>> set =
      crypto::ClientCaSet::Load(options.ca_file, options.crl_dir);
  if (!set.ok()) return set.status();
  if (absl::Status s = (*set)->CheckCoverage(options.now()); !s.ok()) {
    return s;
  }
  std::unique_ptr<ClientTrust> trust(
      new ClientTrust(std::move(options), *std::move(set)));
  trust->Reload();  // logs what is near expiry at start
  trust->reloader_ = std::thread([raw = trust.get()] {
    while (!raw->stop_.WaitForNotificationWithTimeout(raw->options_.refresh)) {
      raw->Reload();
    }
  });
  return trust;
}

ClientTrust::ClientTrust(Options options,
                         std::shared_ptr<const crypto::ClientCaSet> set)
    : options_(std::move(options)), set_(std::move(set)) {}

ClientTrust::~ClientTrust() {
  stop_.Notify();
  if (reloader_.joinable()) reloader_.join();
}

absl::Status ClientTrust::Check(absl::string_view leaf_pem) const {
  std::shared_ptr<const crypto::ClientCaSet> set;
  {
    absl::MutexLock lock(&mu_);
    set = set_;
  }
  absl::Status s = set->CheckCertificate(leaf_pem, options_.now());
  if (!s.ok()) {
    ++refused_;
    LogRefusal(s);
  }
  return s;
}

void ClientTrust::LogRefusal(const absl::Status& status) const {
  const absl::Time now = options_.now();
  uint64_t unlogged = 0;
  {
    absl::MutexLock lock(&log_mu_);
    if (now - last_refusal_log_ < kRefusalLogInterval) {
      ++unlogged_refusals_;
      return;
    }
    last_refusal_log_ = now;
    unlogged = std::exchange(unlogged_refusals_, 0);
  }
  util::LogWarning(absl::StrCat(
      "handshake refused: ", status.message(),
      unlogged == 0 ? ""
                    : absl::StrCat(" (and ", unlogged,
                                   " more refusals since the last line)")));
}

void ClientTrust::Reload() {
  absl::StatusOr<std::unique_ptr<crypto::ClientCaSet>> loaded =
      crypto::ClientCaSet::Load(options_.ca_file, options_.crl_dir);
  if (!loaded.ok()) {
    // A CA file mid-rewrite: keep the set in force, try again next time.
    util::LogError(
        absl::StrCat("ALERT client CA reload failed, keeping the "
                     "previous CAs and CRLs: ",
                     loaded.status().message()));
    return;
  }
  const absl::Time now = options_.now();
  // A CRL older than the one in force would un-revoke what the newer lists
  // (a restored backup, or an attacker's copy): keep the set in force.
  {
    std::shared_ptr<const crypto::ClientCaSet> current;
    {
      absl::MutexLock lock(&mu_);
      current = set_;
    }
    for (const crypto::ClientCaSet::CaCrl& was : current->Cas()) {
      for (const crypto::ClientCaSet::CaCrl& now_ca : (*loaded)->Cas()) {
        if (now_ca.subject == was.subject && was.crl_this_update.has_value() &&
            (!now_ca.crl_this_update.has_value() ||
             *now_ca.crl_this_update < *was.crl_this_update)) {
          util::LogError(absl::StrCat(
              "ALERT CRL of client CA \"", was.subject,
              "\" on disk is older than the one in force (thisUpdate ",
              absl::FormatTime(*was.crl_this_update),
              "): reload refused, the CAs and CRLs in force stay"));
          return;
        }
      }
    }
  }
  for (const crypto::ClientCaSet::CaCrl& ca : (*loaded)->Cas()) {
    if (!ca.crl_next_update.has_value()) {
      util::LogError(absl::StrCat(
          "ALERT client CA \"", ca.subject, "\" has no CRL it signed in ",
          options_.crl_dir, ": its clients are refused"));
    } else if (*ca.crl_next_update <= now) {
      util::LogError(absl::StrCat(
          "ALERT CRL of client CA \"", ca.subject, "\" expired at ",
          absl::FormatTime(*ca.crl_next_update),
          ": its clients are refused until a current CRL is installed"));
    } else if (*ca.crl_next_update - now <= options_.expiry_warning) {
      util::LogWarning(absl::StrCat(
          "ALERT CRL of client CA \"", ca.subject, "\" expires at ",
          absl::FormatTime(*ca.crl_next_update),
          ": publish a new CRL before then, or its clients will be refused"));
    }
  }
  absl::MutexLock lock(&mu_);
  set_ = *std::move(loaded);
}

std::shared_ptr<grpc::experimental::CertificateVerifier>
ClientTrust::Verifier() {
  return grpc::experimental::ExternalCertificateVerifier::Create<
      RevocationVerifier>(this);
}

uint64_t ClientTrust::seconds_until_crl_expiry() const {
  std::shared_ptr<const crypto::ClientCaSet> set;
  {
    absl::MutexLock lock(&mu_);
    set = set_;
  }
  const absl::Time now = options_.now();
  int64_t least = INT64_MAX;
  for (const crypto::ClientCaSet::CaCrl& ca : set->Cas()) {
    const int64_t left = ca.crl_next_update.has_value()
                             ? absl::ToInt64Seconds(*ca.crl_next_update - now)
                             : 0;
    least = std::min(least, left);
  }
  return least <= 0 ? 0 : static_cast<uint64_t>(least);
}

}  // namespace cardvault::service
