// gRPC front of the vault: proto <-> domain translation and status mapping,
// nothing else. Request and response messages are never logged.
//
// Served with gRPC's callback API: each call is handed to a
// BlockingExecutor thread (a vault call may wait for the durable group
// commit or the HSM), which finishes the call's reactor; gRPC's own threads
// never block. A full executor queue answers RESOURCE_EXHAUSTED.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_SERVICE_TOKEN_VAULT_SERVICE_H_
#define CARDVAULT_SERVER_SERVICE_TOKEN_VAULT_SERVICE_H_

#include <functional>

#include "cardvault/v1/vault.grpc.pb.h"
#include "server/service/blocking_executor.h"
#include "server/vault/vault.h"

namespace cardvault::service {

class TokenVaultService final
    : public ::cardvault::v1::TokenVault::CallbackService {
 public:
  // `vault` and `executor` must outlive the service.
  TokenVaultService(const vault::Vault* vault, BlockingExecutor* executor)
      : vault_(vault), executor_(executor) {}

  grpc::ServerUnaryReactor* Tokenize(
      grpc::CallbackServerContext* context,
      const ::cardvault::v1::TokenizeRequest* request,
      ::cardvault::v1::TokenizeResponse* response) override;

  grpc::ServerUnaryReactor* Detokenize(
      grpc::CallbackServerContext* context,
      const ::cardvault::v1::DetokenizeRequest* request,
      ::cardvault::v1::DetokenizeResponse* response) override;

  grpc::ServerUnaryReactor* TokenizeBatch(
      grpc::CallbackServerContext* context,
      const ::cardvault::v1::TokenizeBatchRequest* request,
      ::cardvault::v1::TokenizeBatchResponse* response) override;

  grpc::ServerUnaryReactor* DetokenizeBatch(
      grpc::CallbackServerContext* context,
      const ::cardvault::v1::DetokenizeBatchRequest* request,
      ::cardvault::v1::DetokenizeBatchResponse* response) override;

  grpc::ServerUnaryReactor* GetTokenInfo(
      grpc::CallbackServerContext* context,
      const ::cardvault::v1::GetTokenInfoRequest* request,
      ::cardvault::v1::TokenInfo* response) override;

  grpc::ServerUnaryReactor* DeleteToken(
      grpc::CallbackServerContext* context,
      const ::cardvault::v1::DeleteTokenRequest* request,
      ::cardvault::v1::DeleteTokenResponse* response) override;

 private:
  // Runs `call` on the executor and finishes the call with its status.
  grpc::ServerUnaryReactor* Offload(grpc::CallbackServerContext* context,
                                    std::function<grpc::Status()> call);

  const vault::Vault* const vault_;
  BlockingExecutor* const executor_;
};

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_TOKEN_VAULT_SERVICE_H_
