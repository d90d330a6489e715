#include "client/vault_client.h"

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace cardvault::client {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     absl::string_view what) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read ", what, " ", path));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateMutualTlsChannel(
    const ClientOptions& options) {
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> ca = ReadFile(options.ca_file, "CA file");
  if (!ca.ok()) return ca.status();
  ssl.pem_root_certs = *std::move(ca);
  // An empty cert or key means "no client certificate": the server must then
  // refuse the handshake, which tests rely on.
  if (!options.cert_file.empty()) {
    absl::StatusOr<std::string> cert =
        ReadFile(options.cert_file, "certificate file");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadFile(options.key_file, "key file");
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *std::move(cert);
    ssl.pem_private_key = *std::move(key);
  }
  grpc::ChannelArguments args;
  if (!options.server_name_override.empty()) {
    args.SetSslTargetNameOverride(options.server_name_override);
  }
  if (options.separate_connection_index >= 0) {
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt("cardvault.connection_index",
                options.separate_connection_index);
  }
  return grpc::CreateCustomChannel(options.address, grpc::SslCredentials(ssl),
                                   args);
}

absl::StatusOr<std::unique_ptr<VaultClient>> VaultClient::Create(
    const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      CreateMutualTlsChannel(options);
  if (!channel.ok()) return channel.status();
  return std::unique_ptr<VaultClient>(
      new VaultClient(*std::move(channel), options.deadline));
}

VaultClient::VaultClient(std::shared_ptr<grpc::Channel> channel,
                         absl::Duration deadline)
    : channel_(std::move(channel)),
      stub_(::cardvault::v1::TokenVault::NewStub(channel_)),
      audit_stub_(::cardvault::v1::AuditLog::NewStub(channel_)),
      admin_stub_(::cardvault::v1::KeyAdmin::NewStub(channel_)),
      backup_stub_(::cardvault::v1::BackupAdmin::NewStub(channel_)),
      deadline_(deadline) {}

absl::StatusOr<std::string> VaultClient::Tokenize(
    const ::cardvault::v1::Card& card, absl::string_view domain) const {
  ::cardvault::v1::TokenizeRequest request;
  *request.mutable_card() = card;
  request.set_domain(std::string(domain));
  absl::StatusOr<::cardvault::v1::TokenizeResponse> response =
      Tokenize(request);
  if (!response.ok()) return response.status();
  return response->token();
}

absl::StatusOr<::cardvault::v1::Card> VaultClient::Detokenize(
    absl::string_view token, absl::string_view purpose,
    std::string* domain) const {
  ::cardvault::v1::DetokenizeRequest request;
  request.set_token(std::string(token));
  request.set_purpose(std::string(purpose));
  absl::StatusOr<::cardvault::v1::DetokenizeResponse> response =
      Detokenize(request);
  if (!response.ok()) return response.status();
  if (domain != nullptr) *domain = response->domain();
  return response->card();
}

absl::StatusOr<::cardvault::v1::TokenizeResponse> VaultClient::Tokenize(
    const ::cardvault::v1::TokenizeRequest& request) const {
  return Call(stub_.get(), &::cardvault::v1::TokenVault::Stub::Tokenize,
              request);
}

absl::StatusOr<::cardvault::v1::DetokenizeResponse> VaultClient::Detokenize(
    const ::cardvault::v1::DetokenizeRequest& request) const {
  return Call(stub_.get(), &::cardvault::v1::TokenVault::Stub::Detokenize,
              request);
}

absl::StatusOr<::cardvault::v1::TokenizeBatchResponse>
VaultClient::TokenizeBatch(
    const ::cardvault::v1::TokenizeBatchRequest& request) const {
  return Call(stub_.get(), &::cardvault::v1::TokenVault::Stub::TokenizeBatch,
              request);
}

absl::StatusOr<::cardvault::v1::DetokenizeBatchResponse>
VaultClient::DetokenizeBatch(
    const ::cardvault::v1::DetokenizeBatchRequest& request) const {
  return Call(stub_.get(), &::cardvault::v1::TokenVault::Stub::DetokenizeBatch,
              request);
}

absl::StatusOr<::cardvault::v1::TokenInfo> VaultClient::GetTokenInfo(
    absl::string_view token) const {
  ::cardvault::v1::GetTokenInfoRequest request;
  request.set_token(std::string(token));
  return Call(stub_.get(), &::cardvault::v1::TokenVault::Stub::GetTokenInfo,
              request);
}

absl::StatusOr<bool> VaultClient::DeleteToken(absl::string_view token) const {
  ::cardvault::v1::DeleteTokenRequest request;
  request.set_token(std::string(token));
  absl::StatusOr<::cardvault::v1::DeleteTokenResponse> response = Call(
      stub_.get(), &::cardvault::v1::TokenVault::Stub::DeleteToken, request);
  if (!response.ok()) return response.status();
  return response->deleted();
}

absl::StatusOr<::cardvault::v1::ListKeysResponse> VaultClient::ListKeys()
    const {
  return Call(admin_stub_.get(), &::cardvault::v1::KeyAdmin::Stub::ListKeys,
              ::cardvault::v1::ListKeysRequest());
}

absl::StatusOr<::cardvault::v1::RotateDataKeyResponse>
VaultClient::RotateDataKey() const {
  return Call(admin_stub_.get(),
              &::cardvault::v1::KeyAdmin::Stub::RotateDataKey,
              ::cardvault::v1::RotateDataKeyRequest());
}

absl::StatusOr<::cardvault::v1::Operation> VaultClient::ProposeOperation(
    const ::cardvault::v1::ProposeOperationRequest& request) const {
  return Call(admin_stub_.get(),
              &::cardvault::v1::KeyAdmin::Stub::ProposeOperation, request);
}

absl::StatusOr<::cardvault::v1::Operation> VaultClient::ApproveOperation(
    absl::string_view operation_id) const {
  ::cardvault::v1::ApproveOperationRequest request;
  request.set_operation_id(std::string(operation_id));
  return Call(admin_stub_.get(),
              &::cardvault::v1::KeyAdmin::Stub::ApproveOperation, request);
}

absl::StatusOr<::cardvault::v1::ListOperationsResponse>
VaultClient::ListOperations() const {
  return Call(admin_stub_.get(),
              &::cardvault::v1::KeyAdmin::Stub::ListOperations,
              ::cardvault::v1::ListOperationsRequest());
}

absl::Status VaultClient::ListAuditEvents(
    const ::cardvault::v1::ListEventsRequest& request,
    const std::function<void(const ::cardvault::v1::AuditEvent&)>& visit)
    const {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline_));
  auto reader = audit_stub_->ListEvents(&context, request);
  ::cardvault::v1::AuditEvent event;
  while (reader->Read(&event)) visit(event);
  return FromGrpcStatus(reader->Finish());
}

absl::StatusOr<::cardvault::v1::VerifyChainResponse>
VaultClient::VerifyAuditChain(
    const std::optional<::cardvault::v1::Checkpoint>& checkpoint) const {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline_));
  ::cardvault::v1::VerifyChainRequest request;
  if (checkpoint.has_value())
    *request.mutable_expected_checkpoint() = *checkpoint;
  ::cardvault::v1::VerifyChainResponse response;
  grpc::Status status = audit_stub_->VerifyChain(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<::cardvault::v1::Backup> VaultClient::CreateBackup() const {
  return Call(backup_stub_.get(),
              &::cardvault::v1::BackupAdmin::Stub::CreateBackup,
              ::cardvault::v1::CreateBackupRequest());
}

absl::StatusOr<::cardvault::v1::ListBackupsResponse> VaultClient::ListBackups()
    const {
  return Call(backup_stub_.get(),
              &::cardvault::v1::BackupAdmin::Stub::ListBackups,
              ::cardvault::v1::ListBackupsRequest());
}

absl::StatusOr<::cardvault::v1::BackupVerification> VaultClient::VerifyBackup(
    uint32_t id, bool all_records) const {
  ::cardvault::v1::VerifyBackupRequest request;
  request.set_id(id);
  request.set_all_records(all_records);
  return Call(backup_stub_.get(),
              &::cardvault::v1::BackupAdmin::Stub::VerifyBackup, request);
}

absl::Status VaultClient::DeleteBackup(uint32_t id) const {
  ::cardvault::v1::DeleteBackupRequest request;
  request.set_id(id);
  return Call(backup_stub_.get(),
              &::cardvault::v1::BackupAdmin::Stub::DeleteBackup, request)
      .status();
}

}  // namespace cardvault::client
