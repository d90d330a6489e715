// Start-up check that certificate revocation is really enforced.
//
// gRPC 1.51 lets a handshake pass when the CRL directory holds no CRL for the
// client's CA (it ignores X509_V_ERR_UNABLE_TO_GET_CRL): a missing or
// misnamed CRL silently turns revocation off. cardvaultd therefore refuses
// to start unless every client CA has a current CRL it signed.
#ifndef CARDVAULT_SERVER_CRYPTO_CRL_CHECK_H_
#define CARDVAULT_SERVER_CRYPTO_CRL_CHECK_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace cardvault::crypto {

// For each CA certificate in the PEM bundle `ca_file`, requires a file
// `<subject hash>.r<N>` in `crl_dir` (the `openssl rehash` layout OpenSSL
// looks up) holding a CRL signed by that CA whose nextUpdate is after `now`.
// FAILED_PRECONDITION names the CA subject and what is wrong.
absl::Status CheckCrlCoverage(const std::string& ca_file,
                              const std::string& crl_dir, absl::Time now);

}  // namespace cardvault::crypto

#endif  // CARDVAULT_SERVER_CRYPTO_CRL_CHECK_H_
