#include "server/service/backup_admin_service.h"

#include <string>

#include "server/service/audit_log_service.h"
#include "server/service/caller_context.h"
#include "server/service/request_checks.h"
#include "server/service/status_conversion.h"

namespace cardvault::service {
namespace {

namespace pb = ::cardvault::v1;

}  // namespace

void BackupToProto(const vault::BackupSummary& b, pb::Backup* out) {
  const vault::BackupManifest& m = b.manifest;
  out->set_id(b.stored.id);
  audit::SetEventTime(m.create_time_ms() != 0
                          ? absl::FromUnixMillis(m.create_time_ms())
                          : b.stored.created,
                      out->mutable_create_time());
  out->mutable_audit_head()->set_sequence(m.audit_head_sequence());
  out->mutable_audit_head()->set_mac(m.audit_head_mac());
  out->set_audit_first_sequence(m.audit_first_sequence());
  for (const auto& k : m.keks()) {
    pb::KekReference* r = out->add_keks();
    r->set_label(k.label());
    r->set_generation(k.generation());
  }
  for (uint32_t v : m.data_key_versions()) out->add_data_key_versions(v);
  for (const auto& t : m.tables()) {
    if (t.table() == "tokens") out->set_tokens(t.records());
    if (t.table() == "pan_index") out->set_pan_index_entries(t.records());
    if (t.table() == "audit") out->set_audit_records(t.records());
  }
  out->set_size_bytes(b.stored.size_bytes);
  out->set_files(b.stored.files);
  out->set_new_bytes(b.stored.new_bytes);
  out->set_new_files(b.stored.new_files);
}

void VerificationToProto(const vault::BackupVerification& v,
                         pb::BackupVerification* out) {
  out->set_id(v.id);
  out->set_ok(v.ok);
  for (const std::string& p : v.problems) out->add_problems(p);
  out->set_files_checked(v.files_checked);
  out->set_records_opened(v.records_opened);
  out->set_records_total(v.records_total);
  ChainReportToProto(v.chain, out->mutable_chain());
  BackupToProto(v.backup, out->mutable_backup());
  out->set_deletions_after(v.deletions_after);
}

absl::StatusOr<auth::Caller> BackupAdminService::Admit(
    grpc::ServerContext* context, absl::string_view rpc, bool unknown_fields,
    CallsInFlight::Slot* slot) const {
  absl::StatusOr<auth::Caller> caller = AdmitCaller(
      *vault_, *calls_, *context, pb::BACKUP_ADMIN, rpc, unknown_fields, slot);
  if (!caller.ok()) return caller.status();
  if (backups_ == nullptr) {
    return vault_->RecordRejected(
        *caller, pb::BACKUP_ADMIN, rpc,
        absl::FailedPreconditionError(
            "backups are not configured (backup { directory } in the "
            "server configuration)"));
  }
  return caller;
}

grpc::Status BackupAdminService::CreateBackup(
    grpc::ServerContext* context, const pb::CreateBackupRequest* request,
    pb::Backup* response) {
  CallsInFlight::Slot slot;
  absl::StatusOr<auth::Caller> caller = Admit(
      context, vault::kCreateBackupRpc, HasUnknownFields(*request), &slot);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  absl::StatusOr<vault::BackupSummary> b = backups_->Create(*caller);
  if (!b.ok()) return ToGrpcStatus(b.status());
  BackupToProto(*b, response);
  return grpc::Status::OK;
}

grpc::Status BackupAdminService::ListBackups(
    grpc::ServerContext* context, const pb::ListBackupsRequest* request,
    pb::ListBackupsResponse* response) {
  CallsInFlight::Slot slot;
  absl::StatusOr<auth::Caller> caller =
      Admit(context, vault::kListBackupsRpc, HasUnknownFields(*request), &slot);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto all = backups_->List(*caller);
  if (!all.ok()) return ToGrpcStatus(all.status());
  for (const vault::BackupSummary& b : *all) {
    BackupToProto(b, response->add_backups());
  }
  return grpc::Status::OK;
}

grpc::Status BackupAdminService::VerifyBackup(
    grpc::ServerContext* context, const pb::VerifyBackupRequest* request,
    pb::BackupVerification* response) {
  CallsInFlight::Slot slot;
  absl::StatusOr<auth::Caller> caller = Admit(
      context, vault::kVerifyBackupRpc, HasUnknownFields(*request), &slot);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto v = backups_->Verify(*caller, request->id(), request->all_records());
  if (!v.ok()) return ToGrpcStatus(v.status());
  VerificationToProto(*v, response);
  return grpc::Status::OK;
}

grpc::Status BackupAdminService::DeleteBackup(
    grpc::ServerContext* context, const pb::DeleteBackupRequest* request,
    pb::DeleteBackupResponse* response) {
  CallsInFlight::Slot slot;
  absl::StatusOr<auth::Caller> caller = Admit(
      context, vault::kDeleteBackupRpc, HasUnknownFields(*request), &slot);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  return ToGrpcStatus(backups_->Delete(*caller, request->id()));
}

}  // namespace cardvault::service
