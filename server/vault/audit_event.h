// Audit events of calls, filled from the caller's verified identity.
#ifndef CARDVAULT_SERVER_VAULT_AUDIT_EVENT_H_
#define CARDVAULT_SERVER_VAULT_AUDIT_EVENT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/audit/audit_chain.h"
#include "server/audit/recorded_value.h"
#include "server/auth/access_policy.h"

namespace cardvault::vault {

// An event of `type` for a call of `rpc` by `caller` at `now`
// (milliseconds). The identity is recorded as itself when `policy` names it,
// otherwise as its marker (server/audit/recorded_value.h), with the
// certificate field it came from.
audit::AuditEvent CallerEvent(const auth::Caller& caller,
                              const auth::AccessPolicy& policy,
                              const audit::ValueMarker& marker,
                              ::cardvault::v1::EventType type,
                              absl::string_view rpc, absl::Time now);

// The caller's identity as records and log lines may hold it (as above).
std::string RecordedIdentity(const auth::Caller& caller,
                             const auth::AccessPolicy& policy,
                             const audit::ValueMarker& marker);

// Sets the event's outcome to `status` (code and message).
void SetOutcome(const absl::Status& status, audit::AuditEvent* event);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_AUDIT_EVENT_H_
