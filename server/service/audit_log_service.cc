#include "server/service/audit_log_service.h"

#include <tuple>

#include "server/service/caller_context.h"
#include "server/service/request_checks.h"
#include "server/service/status_conversion.h"

namespace cardvault::service {
namespace pb = ::cardvault::v1;

grpc::Status AuditLogService::ListEvents(
    grpc::ServerContext* context,
    const ::cardvault::v1::ListEventsRequest* request,
    grpc::ServerWriter<::cardvault::v1::AuditEvent>* writer) {
  CallsInFlight::Slot slot;
  absl::StatusOr<auth::Caller> caller =
      AdmitCaller(*vault_, *calls_, *context, v1::LIST_EVENTS,
                  vault::kListEventsRpc, HasUnknownFields(*request), &slot);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  vault::AuditFilter filter;
  for (const auto& [present, proto, out, name] :
       {std::tuple{request->has_start_time(), &request->start_time(),
                   &filter.start_time, "start_time"},
        std::tuple{request->has_end_time(), &request->end_time(),
                   &filter.end_time, "end_time"}}) {
    if (!present) continue;
    absl::StatusOr<absl::Time> t = TimeFromProto(*proto, name);
    if (!t.ok()) {
      return ToGrpcStatus(vault_->RecordRejected(
          *caller, v1::LIST_EVENTS, vault::kListEventsRpc, t.status()));
    }
    *out = *t;
  }
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
  CallsInFlight::Slot slot;
  absl::StatusOr<auth::Caller> caller =
      AdmitCaller(*vault_, *calls_, *context, v1::VERIFY_CHAIN,
                  vault::kVerifyChainRpc, HasUnknownFields(*request), &slot);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  std::optional<audit::Checkpoint> checkpoint;
  if (request->has_expected_checkpoint()) {
    checkpoint = audit::Checkpoint{request->expected_checkpoint().sequence(),
                                   request->expected_checkpoint().mac()};
  }
  absl::StatusOr<audit::ChainReport> report =
      vault_->VerifyAuditChain(*caller, checkpoint);
  if (!report.ok()) return ToGrpcStatus(report.status());
  ChainReportToProto(*report, response);
  return grpc::Status::OK;
}

void ChainReportToProto(const audit::ChainReport& report,
                        pb::VerifyChainResponse* response) {
  response->set_intact(report.intact);
  response->set_first_bad_sequence(report.first_bad_sequence);
  response->set_problem(report.problem);
  response->set_records_checked(report.records_checked);
  response->mutable_head()->set_sequence(report.head_sequence);
  response->mutable_head()->set_mac(report.head_mac);
  for (const audit::RestoreMark& r : report.restores) {
    pb::ChainRestore* out = response->add_restores();
    out->set_sequence(r.sequence);
    audit::SetEventTime(r.time, out->mutable_event_time());
    *out->mutable_restore() = r.restore;
  }
  response->set_checkpoint_lost_in_restore(report.checkpoint_lost_in_restore);
}

}  // namespace cardvault::service
