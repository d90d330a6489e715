// gRPC front of the audit trail for auditors: translation only.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_SERVICE_AUDIT_LOG_SERVICE_H_
#define CARDVAULT_SERVER_SERVICE_AUDIT_LOG_SERVICE_H_

#include "cardvault/v1/audit.grpc.pb.h"
#include "server/service/calls_in_flight.h"
#include "server/vault/vault.h"

namespace cardvault::service {

class AuditLogService final : public ::cardvault::v1::AuditLog::Service {
 public:
  // `vault` and `calls` must outlive the service.
  AuditLogService(const vault::Vault* vault, CallsInFlight* calls)
      : vault_(vault), calls_(calls) {}

  grpc::Status ListEvents(
      grpc::ServerContext* context,
      const ::cardvault::v1::ListEventsRequest* request,
      grpc::ServerWriter<::cardvault::v1::AuditEvent>* writer) override;

  grpc::Status VerifyChain(
      grpc::ServerContext* context,
      const ::cardvault::v1::VerifyChainRequest* request,
      ::cardvault::v1::VerifyChainResponse* response) override;

 private:
  const vault::Vault* const vault_;
  CallsInFlight* const calls_;
};

// The chain report as the API returns it (VerifyChain, VerifyBackup).
void ChainReportToProto(const audit::ChainReport& report,
                        ::cardvault::v1::VerifyChainResponse* response);

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_AUDIT_LOG_SERVICE_H_
