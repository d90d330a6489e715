// Mutual-TLS server credentials: the only kind cardvaultd listens with.
#ifndef CARDVAULT_SERVER_SERVICE_SERVER_CREDENTIALS_H_
#define CARDVAULT_SERVER_SERVICE_SERVER_CREDENTIALS_H_

#include <grpcpp/security/server_credentials.h>

#include <memory>

#include "absl/status/statusor.h"
#include "cardvault/config/v1/config.pb.h"

namespace cardvault::service {

// TLS credentials that require and verify a client certificate against the
// configured client CA (GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_
// VERIFY), with files watched and reloaded, and CRLs checked when a
// directory is given. Fails if a file is unreadable, or if the CRL directory
// lacks a current CRL of a client CA (gRPC would then skip the revocation
// check), so that a broken deployment stops at start-up.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>>
MutualTlsServerCredentials(const ::cardvault::config::v1::TlsConfig& tls);

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_SERVER_CREDENTIALS_H_
