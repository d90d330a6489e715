#include "server/service/server_credentials.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace cardvault::service {
namespace {

absl::Status CheckReadable(const std::string& path, absl::string_view what) {
  if (access(path.c_str(), R_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read ", what, " ", path));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>>
MutualTlsServerCredentials(const ::cardvault::config::v1::TlsConfig& tls,
                           ClientTrust* trust) {
  for (const auto& [path, what] :
       {std::pair{tls.server_cert_file(), "tls.server_cert_file"},
        std::pair{tls.server_key_file(), "tls.server_key_file"},
        std::pair{tls.client_ca_file(), "tls.client_ca_file"}}) {
    if (absl::Status s = CheckReadable(path, what); !s.ok()) return s;
  }
  auto provider =
      std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
          tls.server_key_file(), tls.server_cert_file(), tls.client_ca_file(),
          tls.refresh_interval_seconds());
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_cert_request_type(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  // Not set_crl_directory: OpenSSL's lookup would keep the first CRL it
  // read and pass clients of a CA without one (client_trust.h).
  if (trust != nullptr) options.set_certificate_verifier(trust->Verifier());
  return grpc::experimental::TlsServerCredentials(options);
}

}  // namespace cardvault::service
