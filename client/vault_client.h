// C++ client of cardvault's TokenVault over mutual TLS.
//
// Thread safety: thread-safe; one client (one channel) may serve many
// threads.
#ifndef CARDVAULT_CLIENT_VAULT_CLIENT_H_
#define CARDVAULT_CLIENT_VAULT_CLIENT_H_

#include <grpcpp/channel.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cardvault/v1/audit.grpc.pb.h"
#include "cardvault/v1/backup_admin.grpc.pb.h"
#include "cardvault/v1/key_admin.grpc.pb.h"
#include "cardvault/v1/vault.grpc.pb.h"

namespace cardvault::client {

struct ClientOptions {
  // host:port of cardvaultd.
  std::string address = "127.0.0.1:9443";
  // PEM CA bundle that the server certificate must chain to.
  std::string ca_file;
  // PEM client certificate and private key: the caller's identity.
  std::string cert_file;
  std::string key_file;
  // Deadline of each call.
  absl::Duration deadline = absl::Seconds(5);
  // Overrides the TLS name checked against the server certificate (the host
  // of `address` when empty).
  std::string server_name_override;
  // When set, the channel gets its own connection (gRPC otherwise shares
  // one between channels with equal arguments): load generators use it.
  int separate_connection_index = -1;
};

// Reads the PEM files of `options` and returns a channel that presents the
// client certificate and verifies the server's.
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateMutualTlsChannel(
    const ClientOptions& options);

// The one place a grpc::Status becomes an absl::Status on the client side.
absl::Status FromGrpcStatus(const grpc::Status& status);

class VaultClient {
 public:
  static absl::StatusOr<std::unique_ptr<VaultClient>> Create(
      const ClientOptions& options);

  // Returns the token for `card`, bound to `domain` (the caller's default
  // domain when empty).
  absl::StatusOr<std::string> Tokenize(const ::cardvault::v1::Card& card,
                                       absl::string_view domain = "") const;

  // Returns the card stored under `token`, for the declared `purpose`; its
  // token domain goes to `domain` when given.
  absl::StatusOr<::cardvault::v1::Card> Detokenize(
      absl::string_view token, absl::string_view purpose,
      std::string* domain = nullptr) const;

  // The full TokenVault API, message for message.
  absl::StatusOr<::cardvault::v1::TokenizeResponse> Tokenize(
      const ::cardvault::v1::TokenizeRequest& request) const;
  absl::StatusOr<::cardvault::v1::DetokenizeResponse> Detokenize(
      const ::cardvault::v1::DetokenizeRequest& request) const;
  absl::StatusOr<::cardvault::v1::TokenizeBatchResponse> TokenizeBatch(
      const ::cardvault::v1::TokenizeBatchRequest& request) const;
  absl::StatusOr<::cardvault::v1::DetokenizeBatchResponse> DetokenizeBatch(
      const ::cardvault::v1::DetokenizeBatchRequest& request) const;
  absl::StatusOr<::cardvault::v1::TokenInfo> GetTokenInfo(
      absl::string_view token) const;
  // True if the call removed the token.
  absl::StatusOr<bool> DeleteToken(absl::string_view token) const;

  // Streams audit events matching `request` to `visit`, oldest first.
  // Needs the auditor role.
  absl::Status ListAuditEvents(
      const ::cardvault::v1::ListEventsRequest& request,
      const std::function<void(const ::cardvault::v1::AuditEvent&)>& visit)
      const;

  // Verifies the server's audit chain, and that it still holds `checkpoint`
  // when given. Needs the auditor role.
  absl::StatusOr<::cardvault::v1::VerifyChainResponse> VerifyAuditChain(
      const std::optional<::cardvault::v1::Checkpoint>& checkpoint =
          std::nullopt) const;

  // KeyAdmin, message for message (admin role; ListKeys and ListOperations
  // also auditor).
  absl::StatusOr<::cardvault::v1::ListKeysResponse> ListKeys() const;
  absl::StatusOr<::cardvault::v1::RotateDataKeyResponse> RotateDataKey() const;
  absl::StatusOr<::cardvault::v1::Operation> ProposeOperation(
      const ::cardvault::v1::ProposeOperationRequest& request) const;
  absl::StatusOr<::cardvault::v1::Operation> ApproveOperation(
      absl::string_view operation_id) const;
  absl::StatusOr<::cardvault::v1::ListOperationsResponse> ListOperations()
      const;

  // BackupAdmin, message for message (admin role).
  absl::StatusOr<::cardvault::v1::Backup> CreateBackup() const;
  absl::StatusOr<::cardvault::v1::ListBackupsResponse> ListBackups() const;
  absl::StatusOr<::cardvault::v1::BackupVerification> VerifyBackup(
      uint32_t id, bool all_records) const;
  absl::Status DeleteBackup(uint32_t id) const;

  grpc::Channel* channel() const { return channel_.get(); }

 private:
  VaultClient(std::shared_ptr<grpc::Channel> channel, absl::Duration deadline);

  // One unary call of `stub` under the client's deadline.
  template <typename Stub, typename Request, typename Response>
  absl::StatusOr<Response> Call(
      Stub* stub,
      grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&,
                                   Response*),
      const Request& request) const {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + deadline_));
    Response response;
    grpc::Status status = (stub->*method)(&context, request, &response);
    if (!status.ok()) return FromGrpcStatus(status);
    return response;
  }

  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<::cardvault::v1::TokenVault::Stub> stub_;
  const std::unique_ptr<::cardvault::v1::AuditLog::Stub> audit_stub_;
  const std::unique_ptr<::cardvault::v1::KeyAdmin::Stub> admin_stub_;
  const std::unique_ptr<::cardvault::v1::BackupAdmin::Stub> backup_stub_;
  const absl::Duration deadline_;
};

}  // namespace cardvault::client

#endif  // CARDVAULT_CLIENT_VAULT_CLIENT_H_
