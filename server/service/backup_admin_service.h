// gRPC front of backups: translation and status mapping only.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_SERVICE_BACKUP_ADMIN_SERVICE_H_
#define CARDVAULT_SERVER_SERVICE_BACKUP_ADMIN_SERVICE_H_

#include "cardvault/v1/backup_admin.grpc.pb.h"
#include "server/service/calls_in_flight.h"
#include "server/vault/backups.h"
#include "server/vault/vault.h"

namespace cardvault::service {

class BackupAdminService final : public ::cardvault::v1::BackupAdmin::Service {
 public:
  // `backups` may be null (backups not configured: every call is refused
  // with FAILED_PRECONDITION and recorded). All must outlive the service.
  BackupAdminService(const vault::Backups* backups, const vault::Vault* vault,
                     CallsInFlight* calls)
      : backups_(backups), vault_(vault), calls_(calls) {}

  grpc::Status CreateBackup(grpc::ServerContext* context,
                            const ::cardvault::v1::CreateBackupRequest* request,
                            ::cardvault::v1::Backup* response) override;
  grpc::Status ListBackups(
      grpc::ServerContext* context,
      const ::cardvault::v1::ListBackupsRequest* request,
      ::cardvault::v1::ListBackupsResponse* response) override;
  grpc::Status VerifyBackup(
      grpc::ServerContext* context,
      const ::cardvault::v1::VerifyBackupRequest* request,
      ::cardvault::v1::BackupVerification* response) override;
  grpc::Status DeleteBackup(
      grpc::ServerContext* context,
      const ::cardvault::v1::DeleteBackupRequest* request,
      ::cardvault::v1::DeleteBackupResponse* response) override;

 private:
  // Admits the caller of `rpc`; refuses (and records) when backups are not
  // configured.
  absl::StatusOr<auth::Caller> Admit(grpc::ServerContext* context,
                                     absl::string_view rpc, bool unknown_fields,
                                     CallsInFlight::Slot* slot) const;

  const vault::Backups* const backups_;
  const vault::Vault* const vault_;
  CallsInFlight* const calls_;
};

// The API form of a backup and of a verification.
void BackupToProto(const vault::BackupSummary& b, ::cardvault::v1::Backup* out);
void VerificationToProto(const vault::BackupVerification& v,
                         ::cardvault::v1::BackupVerification* out);

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_BACKUP_ADMIN_SERVICE_H_
