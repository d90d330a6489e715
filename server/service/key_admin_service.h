// gRPC front of key administration: translation and status mapping only.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_SERVICE_KEY_ADMIN_SERVICE_H_
#define CARDVAULT_SERVER_SERVICE_KEY_ADMIN_SERVICE_H_

#include "cardvault/v1/key_admin.grpc.pb.h"
#include "server/service/calls_in_flight.h"
#include "server/vault/key_admin.h"
#include "server/vault/vault.h"

namespace cardvault::service {

class KeyAdminService final : public ::cardvault::v1::KeyAdmin::Service {
 public:
  // `admin` and `vault` (which records refusals of unidentified callers)
  // must outlive the service.
  KeyAdminService(const vault::KeyAdmin* admin, const vault::Vault* vault,
                  CallsInFlight* calls)
      : admin_(admin), vault_(vault), calls_(calls) {}

  grpc::Status ListKeys(grpc::ServerContext* context,
                        const ::cardvault::v1::ListKeysRequest* request,
                        ::cardvault::v1::ListKeysResponse* response) override;
  grpc::Status RotateDataKey(
      grpc::ServerContext* context,
      const ::cardvault::v1::RotateDataKeyRequest* request,
      ::cardvault::v1::RotateDataKeyResponse* response) override;
  grpc::Status ProposeOperation(
      grpc::ServerContext* context,
      const ::cardvault::v1::ProposeOperationRequest* request,
      ::cardvault::v1::Operation* response) override;
  grpc::Status ApproveOperation(
      grpc::ServerContext* context,
      const ::cardvault::v1::ApproveOperationRequest* request,
      ::cardvault::v1::Operation* response) override;
  grpc::Status ListOperations(
      grpc::ServerContext* context,
      const ::cardvault::v1::ListOperationsRequest* request,
      ::cardvault::v1::ListOperationsResponse* response) override;

 private:
  const vault::KeyAdmin* const admin_;
  const vault::Vault* const vault_;
  CallsInFlight* const calls_;
};

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_KEY_ADMIN_SERVICE_H_
