// Which client certificates the server accepts right now: the client CAs
// and their CRLs, re-read every refresh interval while it serves, and a
// gRPC certificate verifier that applies them at every handshake.
//
// Rules (README "Revocation"):
//  - start-up fails unless every client CA has a current CRL it signed;
//  - a certificate listed by a newly read CRL is refused from the next
//    handshake on (within the refresh interval); connections already open
//    end at limits.max_connection_age_seconds;
//  - a CA added to the CA file by a reload is accepted only once a current
//    CRL it signed is there (its clients are refused until then, and an
//    ALERT line says so at every reload);
//  - a CRL nearing its nextUpdate raises an ALERT line at every reload from
//    `expiry_warning` before, and the metric of seconds left; once expired,
//    that CA's clients are refused with an ALERT line saying why, rather
//    than trusted without a revocation check;
//  - a reload that finds a CA's CRL older than the one in force (or none
//    where there was one) is refused whole, with an ALERT line: an old CRL
//    would un-revoke what the newer lists.
//
// Thread safety: thread-safe. One background thread re-reads the files.
#ifndef CARDVAULT_SERVER_SERVICE_CLIENT_TRUST_H_
#define CARDVAULT_SERVER_SERVICE_CLIENT_TRUST_H_

#include <grpcpp/security/tls_certificate_verifier.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/crypto/crl_check.h"

namespace cardvault::service {

class ClientTrust {
 public:
  struct Options {
    std::string ca_file;
    std::string crl_dir;
    // How often the CA file and the CRLs are re-read. Default 60 s.
    absl::Duration refresh = absl::Seconds(60);
    // How long before a CRL's nextUpdate the ALERT starts. Default 7 days.
    absl::Duration expiry_warning = absl::Hours(24 * 7);
    std::function<absl::Time()> now = [] { return absl::Now(); };
  };

  // Reads the files and applies the start-up rule (FAILED_PRECONDITION,
  // naming the CA); then re-reads them every `refresh`.
  static absl::StatusOr<std::unique_ptr<ClientTrust>> Create(Options options);
  ClientTrust(const ClientTrust&) = delete;
  ClientTrust& operator=(const ClientTrust&) = delete;
  ~ClientTrust();

  // OK if the PEM client certificate may connect now (crl_check.h).
  absl::Status Check(absl::string_view leaf_pem) const;

  // Re-reads the files now (the background thread calls it).
  void Reload();

  // A verifier for TlsServerCredentialsOptions that calls Check; `this`
  // must outlive the credentials.
  std::shared_ptr<grpc::experimental::CertificateVerifier> Verifier();

  // For the metrics file.
  uint64_t refused_handshakes() const { return refused_.load(); }
  // Seconds until the first client CA's CRL expires (0 once one has, or a
  // CA has none).
  uint64_t seconds_until_crl_expiry() const;

 private:
  ClientTrust(Options options, std::shared_ptr<const crypto::ClientCaSet> set);
  void LogRefusal(const absl::Status& status) const;

  const Options options_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const crypto::ClientCaSet> set_ ABSL_GUARDED_BY(mu_);
  mutable std::atomic<uint64_t> refused_{0};
  // Refusals are logged at most once per kRefusalLogInterval, with a count.
  mutable absl::Mutex log_mu_;
  mutable absl::Time last_refusal_log_ ABSL_GUARDED_BY(log_mu_) =
      absl::InfinitePast();
  mutable uint64_t unlogged_refusals_ ABSL_GUARDED_BY(log_mu_) = 0;
  absl::Notification stop_;
  std::thread reloader_;
};

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_CLIENT_TRUST_H_
