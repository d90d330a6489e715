// Mutual-TLS server credentials: the only kind cardvaultd listens with.
#ifndef CARDVAULT_SERVER_SERVICE_SERVER_CREDENTIALS_H_
#define CARDVAULT_SERVER_SERVICE_SERVER_CREDENTIALS_H_

#include <grpcpp/security/server_credentials.h>

#include <memory>

#include "absl/status/statusor.h"
#include "cardvault/config/v1/config.pb.h"
#include "server/service/client_trust.h"

namespace cardvault::service {

// TLS credentials that require and verify a client certificate against the
// configured client CA (GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_
// VERIFY), with files watched and reloaded. With `trust` (made from
// tls.crl_directory), every handshake is also checked against the CRLs in
// force (client_trust.h). Fails if a file is unreadable, so that a broken
// deployment stops at start-up. `trust` must outlive the credentials.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>>
MutualTlsServerCredentials(const ::cardvault::config::v1::TlsConfig& tls,
                           ClientTrust* trust);

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_SERVER_CREDENTIALS_H_
