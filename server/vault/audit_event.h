// Audit events of calls, filled from the caller's verified identity.
#ifndef CARDVAULT_SERVER_VAULT_AUDIT_EVENT_H_
#define CARDVAULT_SERVER_VAULT_AUDIT_EVENT_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/audit/audit_log.h"
#include "server/auth/access_policy.h"

namespace cardvault::vault {

// An event of `type` for a call of `rpc` by `caller` at `now` (milliseconds).
audit::AuditEvent CallerEvent(const auth::Caller& caller,
                              ::cardvault::v1::EventType type,
                              absl::string_view rpc, absl::Time now);

// Sets the event's outcome to `status` (code and message).
void SetOutcome(const absl::Status& status, audit::AuditEvent* event);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_AUDIT_EVENT_H_
