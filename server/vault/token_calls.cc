#include "server/vault/token_calls.h"

#include "absl/strings/str_cat.h"
#include "server/vault/audit_event.h"
#include "server/vault/token.h"
#include "server/vault/token_requests.h"

namespace cardvault::vault {

absl::Status TokenCalls::CheckBatch(const auth::Caller& caller,
                                    auth::Permission permission,
                                    v1::EventType type, absl::string_view rpc,
                                    size_t items) const {
  // A caller without the role learns nothing about its items.
  absl::Status s = deps_.policy->Current()->Check(caller, permission);
  if (s.ok() && (items == 0 || items > options_.max_batch_items)) {
    s = absl::InvalidArgumentError(absl::StrCat(
        "a batch holds 1 to ", options_.max_batch_items, " requests"));
  }
  if (s.ok()) return s;
  return recorder_->Record(recorder_->NewEvent(caller, type, rpc), s);
}

absl::Status TokenCalls::CheckTokenCall(const auth::AccessPolicy& policy,
                                        const auth::Caller& caller,
                                        auth::Permission permission,
                                        absl::string_view token,
                                        audit::AuditEvent* event) const {
  const bool well_formed = IsWellFormedToken(token);
  event->set_token(recorder_->RecordedToken(token, false));
  // Authorise before looking at the token, so an unauthorised caller
  // learns nothing about it.
  if (absl::Status s = policy.Check(caller, permission); !s.ok()) return s;
  if (!well_formed) return absl::InvalidArgumentError("token is malformed");
  return absl::OkStatus();
}

absl::StatusOr<TokenCalls::Started> TokenCalls::StartTokenCall(
    const auth::Caller& caller, v1::EventType type, absl::string_view rpc,
    auth::Permission permission, absl::string_view token) const {
  Started call;
  call.policy = deps_.policy->Current();
  call.event = recorder_->NewEvent(*call.policy, caller, type, rpc);
  if (absl::Status s =
          CheckTokenCall(*call.policy, caller, permission, token, &call.event);
      !s.ok()) {
    return recorder_->Record(std::move(call.event), s);
  }
  return call;
}

std::optional<audit::AuditEvent> TokenCalls::BatchEvent(
    const auth::AccessPolicy& policy, const auth::Caller& caller,
    v1::EventType type, absl::string_view rpc) const {
  if (rpc != kTokenizeBatchRpc && rpc != kDetokenizeBatchRpc) {
    return std::nullopt;
  }
  audit::AuditEvent event = recorder_->NewEvent(policy, caller, type, rpc);
  SetOutcome(absl::OkStatus(), &event);
  return event;
}

absl::StatusOr<OpenedCard> TokenCalls::OpenRecord(
    absl::string_view token, std::string* record_out) const {
  absl::StatusOr<std::string> record =
      deps_.records->Get(storage::Table::kTokens, token);
  if (absl::IsNotFound(record.status())) {
    return absl::NotFoundError("token not found");
  }
  if (!record.ok()) return absl::UnavailableError("storage unavailable");
  absl::StatusOr<OpenedCard> opened =
      OpenCardRecord(*deps_.keys, token, *record);
  if (!opened.ok()) return opened.status();
  if (record_out != nullptr) *record_out = *std::move(record);
  return opened;
}

}  // namespace cardvault::vault
