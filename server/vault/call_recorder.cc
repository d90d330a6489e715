#include "server/vault/call_recorder.h"

#include <vector>

#include "server/vault/audit_event.h"
#include "server/vault/token.h"

namespace cardvault::vault {

audit::AuditEvent CallRecorder::NewEvent(const auth::Caller& caller,
                                         ::cardvault::v1::EventType type,
                                         absl::string_view rpc) const {
  return NewEvent(*policy_->Current(), caller, type, rpc);
}

audit::AuditEvent CallRecorder::NewEvent(const auth::AccessPolicy& policy,
                                         const auth::Caller& caller,
                                         ::cardvault::v1::EventType type,
                                         absl::string_view rpc) const {
  return CallerEvent(caller, policy, trail_->marker(), type, rpc, now_());
}

audit::AuditEvent CallRecorder::ServerEvent(
    ::cardvault::v1::EventType type) const {
  return audit::ServerEvent(type, now_());
}

std::string CallRecorder::RecordedIdentity(const auth::Caller& caller) const {
  return vault::RecordedIdentity(caller, *policy_->Current(), trail_->marker());
}

std::string CallRecorder::RecordedToken(absl::string_view token,
                                        bool found) const {
  const bool numeric = !token.empty() && token[0] >= '0' && token[0] <= '9';
  return trail_->marker().Recorded(
      token, IsWellFormedToken(token) && (found || !numeric));
}

absl::Status CallRecorder::Record(audit::AuditEvent event,
                                  const absl::Status& status) const {
  return Await<absl::Status>([&](Done<absl::Status> done) {
    RecordAsync(std::move(event), status, std::move(done));
  });
}

void CallRecorder::RecordAsync(audit::AuditEvent event, absl::Status status,
                               Done<absl::Status> done) const {
  SetOutcome(status, &event);
  std::vector<commit::Entry> entries(1);
  entries[0].event = std::move(event);
  trail_->AppendAllAsync(
      std::move(entries), [status = std::move(status), done = std::move(done)](
                              std::vector<commit::Entry>& written) mutable {
        std::move(done)(
            written[0].result.ok()
                ? std::move(status)
                : absl::UnavailableError("audit trail unavailable"));
      });
}

}  // namespace cardvault::vault
