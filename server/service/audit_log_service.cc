#include "server/service/audit_log_service.h"

#include "server/service/caller_context.h"
#include "server/service/status_conversion.h"

namespace cardvault::service {
namespace {

std::optional<absl::Time> TimeOf(const google::protobuf::Timestamp& t,
                                 bool present) {
  if (!present) return std::nullopt;
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

}  // namespace

grpc::Status AuditLogService::ListEvents(
    grpc::ServerContext* context,
    const ::cardvault::v1::ListEventsRequest* request,
    grpc::ServerWriter<::cardvault::v1::AuditEvent>* writer) {
  absl::StatusOr<auth::Caller> caller = CallerOf(*context);
  if (!caller.ok()) {
    return ToGrpcStatus(
        vault_->RecordRejected(UnidentifiedCaller(*context), v1::LIST_EVENTS,
                               vault::kListEventsRpc, caller.status()));
  }
  vault::AuditFilter filter;
  filter.start_time = TimeOf(request->start_time(), request->has_start_time());
  filter.end_time = TimeOf(request->end_time(), request->has_end_time());
  filter.identity = request->identity();
  filter.event_type = request->event_type();
  filter.token = request->token();
  filter.max_events = request->max_events();
  return ToGrpcStatus(vault_->ListAuditEvents(
      *caller, filter, [&](const audit::AuditEvent& event) {
        return !context->IsCancelled() && writer->Write(event);
      }));
}

grpc::Status AuditLogService::VerifyChain(
    grpc::ServerContext* context,
    const ::cardvault::v1::VerifyChainRequest* request,
    ::cardvault::v1::VerifyChainResponse* response) {
  absl::StatusOr<auth::Caller> caller = CallerOf(*context);
  if (!caller.ok()) {
    return ToGrpcStatus(
        vault_->RecordRejected(UnidentifiedCaller(*context), v1::VERIFY_CHAIN,
                               vault::kVerifyChainRpc, caller.status()));
  }
  std::optional<audit::Checkpoint> checkpoint;
  if (request->has_expected_checkpoint()) {
    checkpoint = audit::Checkpoint{request->expected_checkpoint().sequence(),
                                   request->expected_checkpoint().mac()};
  }
  absl::StatusOr<audit::ChainReport> report =
      vault_->VerifyAuditChain(*caller, checkpoint);
  if (!report.ok()) return ToGrpcStatus(report.status());
  response->set_intact(report->intact);
  response->set_first_bad_sequence(report->first_bad_sequence);
  response->set_problem(report->problem);
  response->set_records_checked(report->records_checked);
  response->mutable_head()->set_sequence(report->head_sequence);
  response->mutable_head()->set_mac(report->head_mac);
  return grpc::Status::OK;
}

}  // namespace cardvault::service
