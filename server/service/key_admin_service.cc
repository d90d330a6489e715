#include "server/service/key_admin_service.h"

#include <string>
#include <utility>

#include "server/service/caller_context.h"
#include "server/service/request_checks.h"
#include "server/service/status_conversion.h"
#include "server/vault/audit_event.h"

namespace cardvault::service {
namespace {

namespace pb = ::cardvault::v1;

void ToProto(const vault::KeyInfo& k, pb::KeyInfo* out) {
  out->set_id(k.id);
  out->set_version(k.version);
  out->set_purpose(k.purpose);
  out->set_algorithm(k.algorithm);
  out->set_state(std::string(vault::KeyStateName(k.state)));
  if (k.created != absl::InfinitePast()) {
    audit::SetEventTime(k.created, out->mutable_create_time());
  }
  if (k.cryptoperiod_end != absl::InfiniteFuture()) {
    audit::SetEventTime(k.cryptoperiod_end,
                        out->mutable_cryptoperiod_end_time());
  }
  out->set_encryptions(k.encryptions);
  out->set_new_records(k.new_records);
  out->set_records(k.records);
}

pb::OperationKind KindToProto(vault::OperationKind kind) {
  switch (kind) {
    case vault::OperationKind::kDestroyDataKey:
      return pb::DESTROY_DATA_KEY;
    case vault::OperationKind::kReencryptAll:
      return pb::REENCRYPT_ALL;
    case vault::OperationKind::kRotateKek:
      return pb::ROTATE_KEK;
    case vault::OperationKind::kDestroyKek:
      return pb::DESTROY_KEK;
  }
  return pb::OPERATION_KIND_UNSPECIFIED;
}

pb::Operation::State StateToProto(vault::OperationState state) {
  switch (state) {
    case vault::OperationState::kPending:
      return pb::Operation::PENDING;
    case vault::OperationState::kExecuted:
      return pb::Operation::EXECUTED;
    case vault::OperationState::kFailed:
      return pb::Operation::FAILED;
    case vault::OperationState::kExpired:
      return pb::Operation::EXPIRED;
    case vault::OperationState::kExecuting:
      return pb::Operation::EXECUTING;
  }
  return pb::Operation::STATE_UNSPECIFIED;
}

void ToProto(const vault::Operation& op, pb::Operation* out) {
  out->set_id(op.id);
  out->set_kind(KindToProto(op.kind));
  out->set_key_version(op.key_version);
  out->set_reason(op.reason);
  out->set_proposer(op.proposer);
  for (const std::string& a : op.approvers) out->add_approvers(a);
  out->set_required_approvals(op.required_approvals);
  out->set_state(StateToProto(op.state));
  audit::SetEventTime(op.proposed, out->mutable_propose_time());
  audit::SetEventTime(op.expires, out->mutable_expire_time());
  out->set_outcome(op.outcome);
}

}  // namespace

grpc::Status KeyAdminService::ListKeys(grpc::ServerContext* context,
                                       const pb::ListKeysRequest* request,
                                       pb::ListKeysResponse* response) {
  CallsInFlight::Slot slot;
  absl::StatusOr<auth::Caller> caller =
      AdmitCaller(*vault_, *calls_, *context, pb::KEY_ADMIN,
                  vault::kListKeysRpc, HasUnknownFields(*request), &slot);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto keys = admin_->ListKeys(*caller);
  if (!keys.ok()) return ToGrpcStatus(keys.status());
  for (const vault::KeyInfo& k : *keys) ToProto(k, response->add_keys());
  return grpc::Status::OK;
}

grpc::Status KeyAdminService::RotateDataKey(
    grpc::ServerContext* context, const pb::RotateDataKeyRequest* request,
    pb::RotateDataKeyResponse* response) {
  CallsInFlight::Slot slot;
  absl::StatusOr<auth::Caller> caller =
      AdmitCaller(*vault_, *calls_, *context, pb::KEY_ADMIN,
                  vault::kRotateDataKeyRpc, HasUnknownFields(*request), &slot);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  absl::StatusOr<uint32_t> version = admin_->RotateDataKey(*caller);
  if (!version.ok()) return ToGrpcStatus(version.status());
  response->set_key_id(vault::DataKeyId(*version));
  return grpc::Status::OK;
}

grpc::Status KeyAdminService::ProposeOperation(
    grpc::ServerContext* context, const pb::ProposeOperationRequest* request,
    pb::Operation* response) {
  CallsInFlight::Slot slot;
  absl::StatusOr<auth::Caller> caller = AdmitCaller(
      *vault_, *calls_, *context, pb::KEY_ADMIN, vault::kProposeOperationRpc,
      HasUnknownFields(*request), &slot);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  vault::OperationKind kind;
  switch (request->kind()) {
    case pb::DESTROY_DATA_KEY:
      kind = vault::OperationKind::kDestroyDataKey;
      break;
    case pb::REENCRYPT_ALL:
      kind = vault::OperationKind::kReencryptAll;
      break;
    case pb::ROTATE_KEK:
      kind = vault::OperationKind::kRotateKek;
      break;
    case pb::DESTROY_KEK:
      kind = vault::OperationKind::kDestroyKek;
      break;
    default:
      kind = static_cast<vault::OperationKind>(0);  // refused by KeyAdmin
  }
  auto op =
      admin_->Propose(*caller, kind, request->key_version(), request->reason());
  if (!op.ok()) return ToGrpcStatus(op.status());
  ToProto(*op, response);
  return grpc::Status::OK;
}

grpc::Status KeyAdminService::ApproveOperation(
    grpc::ServerContext* context, const pb::ApproveOperationRequest* request,
    pb::Operation* response) {
  CallsInFlight::Slot slot;
  absl::StatusOr<auth::Caller> caller = AdmitCaller(
      *vault_, *calls_, *context, pb::KEY_ADMIN, vault::kApproveOperationRpc,
      HasUnknownFields(*request), &slot);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto op = admin_->Approve(*caller, request->operation_id());
  if (!op.ok()) return ToGrpcStatus(op.status());
  ToProto(*op, response);
  return grpc::Status::OK;
}

grpc::Status KeyAdminService::ListOperations(
    grpc::ServerContext* context, const pb::ListOperationsRequest* request,
    pb::ListOperationsResponse* response) {
  CallsInFlight::Slot slot;
  absl::StatusOr<auth::Caller> caller =
      AdmitCaller(*vault_, *calls_, *context, pb::KEY_ADMIN,
                  vault::kListOperationsRpc, HasUnknownFields(*request), &slot);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto ops = admin_->ListOperations(*caller);
  if (!ops.ok()) return ToGrpcStatus(ops.status());
  for (const vault::Operation& op : *ops)
    ToProto(op, response->add_operations());
  return grpc::Status::OK;
}

}  // namespace cardvault::service
