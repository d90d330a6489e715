#include "server/vault/audit_reader.h"

#include <algorithm>
#include <memory>

#include "absl/strings/str_cat.h"
#include "server/vault/audit_event.h"

namespace cardvault::vault {
namespace {

namespace v1 = ::cardvault::v1;

bool Matches(const AuditFilter& f, const audit::AuditEvent& e) {
  const absl::Time t = audit::EventTime(e.event_time());
  return (!f.start_time || t >= *f.start_time) &&
         (!f.end_time || t < *f.end_time) &&
         (f.identity.empty() || e.identity() == f.identity) &&
         (f.event_type == v1::EVENT_TYPE_UNSPECIFIED ||
          e.event_type() == f.event_type) &&
         (f.token.empty() || e.token() == f.token ||
          std::any_of(
              e.items().begin(), e.items().end(),
              [&](const v1::BatchItem& i) { return i.token() == f.token; }));
}

// What an audit read asked for, for its own record: the identity filter as
// itself only when the policy binds it (else its marker), the token filter
// in the record's token field.
std::string DescribeFilter(const AuditFilter& f,
                           const auth::AccessPolicy& policy,
                           const audit::ValueMarker& marker) {
  std::string out = "filter:";
  if (f.start_time) {
    absl::StrAppend(&out, " from=", absl::FormatTime(*f.start_time));
  }
  if (f.end_time) absl::StrAppend(&out, " to=", absl::FormatTime(*f.end_time));
  if (!f.identity.empty()) {
    absl::StrAppend(&out, " identity=",
                    marker.Recorded(f.identity, policy.Binds(f.identity)));
  }
  if (f.event_type != v1::EVENT_TYPE_UNSPECIFIED) {
    absl::StrAppend(&out, " event_type=", v1::EventType_Name(f.event_type));
  }
  if (f.max_events != 0) absl::StrAppend(&out, " max_events=", f.max_events);
  return out == "filter:" ? "filter: none" : out;
}

}  // namespace

absl::Status AuditReader::ListAuditEvents(
    const auth::Caller& caller, const AuditFilter& filter,
    const std::function<bool(const audit::AuditEvent&)>& visit) const {
  const std::shared_ptr<const auth::AccessPolicy> policy = policy_->Current();
  audit::AuditEvent event =
      recorder_->NewEvent(*policy, caller, v1::LIST_EVENTS, kListEventsRpc);
  const audit::ValueMarker& marker = trail_->marker();
  event.set_token(recorder_->RecordedToken(
      filter.token, records_->Get(storage::Table::kTokens, filter.token).ok()));
  event.set_detail(DescribeFilter(filter, *policy, marker));
  absl::Status allowed = policy->Check(caller, auth::Permission::kReadAudit);
  if (absl::Status s = recorder_->Record(std::move(event), allowed); !s.ok())
    return s;
  uint32_t sent = 0;
  return trail_->Scan(1, [&](const audit::AuditEvent& e) {
    if (!Matches(filter, e)) return true;
    if (!visit(e)) return false;
    return filter.max_events == 0 || ++sent < filter.max_events;
  });
}

absl::StatusOr<audit::ChainReport> AuditReader::VerifyAuditChain(
    const auth::Caller& caller,
    const std::optional<audit::Checkpoint>& checkpoint) const {
  audit::AuditEvent event =
      recorder_->NewEvent(caller, v1::VERIFY_CHAIN, kVerifyChainRpc);
  absl::Status allowed =
      policy_->Current()->Check(caller, auth::Permission::kReadAudit);
  if (absl::Status s = recorder_->Record(std::move(event), allowed); !s.ok())
    return s;
  return trail_->Verify(checkpoint);
}

}  // namespace cardvault::vault
