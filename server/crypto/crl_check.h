// Revocation of client certificates, checked by cardvaultd itself at every
// handshake against CRLs re-read while it runs.
//
// gRPC 1.51 reads CRLs through OpenSSL's hash-directory lookup, which keeps a
// CRL once loaded (a CRL replaced on disk is not seen until restart) and lets
// a handshake pass when the directory has no CRL for the client's CA at all.
// So the server verifies client certificates with a ClientCaSet instead: the
// client CAs and, for each, the newest CRL it signed, read at one moment and
// replaced whole on every reload.
//
// CRL files: `<crl_dir>/<CA subject hash>.r<N>`, N from 0 (the `openssl
// rehash` layout; at most kMaxCrlFilesPerCa per CA), PEM.
//
// Thread safety: ClientCaSet is immutable after Load and thread-safe.
#ifndef CARDVAULT_SERVER_CRYPTO_CRL_CHECK_H_
#define CARDVAULT_SERVER_CRYPTO_CRL_CHECK_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace cardvault::crypto {

inline constexpr int kMaxCrlFilesPerCa = 16;
// CA certificates above a client certificate that CheckCertificate follows.
inline constexpr int kMaxChainDepth = 8;

class ClientCaSet {
 public:
  struct CaCrl {
    std::string subject;  // of the CA, one line
    // The newest CRL the CA signed (validity), if any.
    std::optional<absl::Time> crl_this_update;
    std::optional<absl::Time> crl_next_update;
  };

  // Reads every CA certificate of the PEM bundle `ca_file` and, for each,
  // the CRLs of `crl_dir` that it signed, keeping the newest (latest
  // thisUpdate). A CRL file that does not parse or verify is skipped.
  // FAILED_PRECONDITION if `ca_file` cannot be read or holds no CA.
  static absl::StatusOr<std::unique_ptr<ClientCaSet>> Load(
      const std::string& ca_file, const std::string& crl_dir);
  ~ClientCaSet();
  ClientCaSet(const ClientCaSet&) = delete;
  ClientCaSet& operator=(const ClientCaSet&) = delete;

  // OK when every CA has a CRL current at `now` (thisUpdate <= now <
  // nextUpdate); FAILED_PRECONDITION naming the first CA that has not.
  absl::Status CheckCoverage(absl::Time now) const;

  // OK when the PEM certificate `leaf_pem` was issued (and signed) by one of
  // the CAs, whose CRL is current at `now` and does not list its serial, and
  // so on for that CA up to a self-signed root (an intermediate CA revoked by
  // its root's CRL revokes its clients). UNAUTHENTICATED otherwise, saying
  // why (revoked, a CRL expired or missing, an issuer not a client CA),
  // naming the CA and the serial, never anything else of the certificate.
  absl::Status CheckCertificate(absl::string_view leaf_pem,
                                absl::Time now) const;

  // Each CA with its CRL's validity, in file order.
  std::vector<CaCrl> Cas() const;

 private:
  struct Entry;
  explicit ClientCaSet(std::vector<std::unique_ptr<Entry>> entries);
  const std::vector<std::unique_ptr<Entry>> entries_;
};

// ClientCaSet::Load then CheckCoverage: the start-up (and reload) rule that
// every client CA has a current CRL it signed.
absl::Status CheckCrlCoverage(const std::string& ca_file,
                              const std::string& crl_dir, absl::Time now);

}  // namespace cardvault::crypto

#endif  // CARDVAULT_SERVER_CRYPTO_CRL_CHECK_H_
