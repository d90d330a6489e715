// Facts about a peer certificate that go into audit records.
#ifndef CARDVAULT_SERVER_CRYPTO_CERTIFICATE_INFO_H_
#define CARDVAULT_SERVER_CRYPTO_CERTIFICATE_INFO_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace cardvault::crypto {

struct CertificateInfo {
  std::string serial_hex;  // uppercase hex, no separators
  std::string sha256_hex;  // fingerprint of the DER encoding, lowercase hex
};

// Parses one PEM certificate. INVALID_ARGUMENT if it does not parse.
absl::StatusOr<CertificateInfo> ParseCertificateInfo(absl::string_view pem);

// OK if `cert_pem` starts with a certificate and `key_pem` holds the private
// key that matches it; INVALID_ARGUMENT otherwise (neither is echoed).
absl::Status CheckKeyPair(absl::string_view cert_pem,
                          absl::string_view key_pem);

}  // namespace cardvault::crypto

#endif  // CARDVAULT_SERVER_CRYPTO_CERTIFICATE_INFO_H_
