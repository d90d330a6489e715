// gRPC front of the vault: proto <-> domain translation and status mapping,
// nothing else. Request and response messages are never logged.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_SERVICE_TOKEN_VAULT_SERVICE_H_
#define CARDVAULT_SERVER_SERVICE_TOKEN_VAULT_SERVICE_H_

#include "cardvault/v1/vault.grpc.pb.h"
#include "server/vault/vault.h"

namespace cardvault::service {

class TokenVaultService final : public ::cardvault::v1::TokenVault::Service {
 public:
  // `vault` must outlive the service.
  explicit TokenVaultService(const vault::Vault* vault) : vault_(vault) {}

  grpc::Status Tokenize(grpc::ServerContext* context,
                        const ::cardvault::v1::TokenizeRequest* request,
                        ::cardvault::v1::TokenizeResponse* response) override;

  grpc::Status Detokenize(
      grpc::ServerContext* context,
      const ::cardvault::v1::DetokenizeRequest* request,
      ::cardvault::v1::DetokenizeResponse* response) override;

  grpc::Status TokenizeBatch(
      grpc::ServerContext* context,
      const ::cardvault::v1::TokenizeBatchRequest* request,
      ::cardvault::v1::TokenizeBatchResponse* response) override;

  grpc::Status DetokenizeBatch(
      grpc::ServerContext* context,
      const ::cardvault::v1::DetokenizeBatchRequest* request,
      ::cardvault::v1::DetokenizeBatchResponse* response) override;

  grpc::Status GetTokenInfo(grpc::ServerContext* context,
                            const ::cardvault::v1::GetTokenInfoRequest* request,
                            ::cardvault::v1::TokenInfo* response) override;

  grpc::Status DeleteToken(
      grpc::ServerContext* context,
      const ::cardvault::v1::DeleteTokenRequest* request,
      ::cardvault::v1::DeleteTokenResponse* response) override;

 private:
  const vault::Vault* const vault_;
};

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_TOKEN_VAULT_SERVICE_H_
