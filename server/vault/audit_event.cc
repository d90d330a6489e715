#include "server/vault/audit_event.h"

#include <string>

namespace cardvault::vault {

std::string RecordedIdentity(const auth::Caller& caller,
                             const auth::AccessPolicy& policy,
                             const audit::ValueMarker& marker) {
  return marker.Recorded(caller.identity, policy.Names(caller));
}

audit::AuditEvent CallerEvent(const auth::Caller& caller,
                              const auth::AccessPolicy& policy,
                              const audit::ValueMarker& marker,
                              ::cardvault::v1::EventType type,
                              absl::string_view rpc, absl::Time now) {
  audit::AuditEvent e;
  audit::SetEventTime(now, e.mutable_event_time());
  e.set_event_type(type);
  e.set_rpc(std::string(rpc));
  e.set_identity(RecordedIdentity(caller, policy, marker));
  if (!caller.identity.empty()) {
    e.set_identity_source(caller.identity_is_common_name ? v1::COMMON_NAME
                                                         : v1::URI_SAN);
  }
  e.set_certificate_serial(caller.certificate_serial);
  e.set_certificate_sha256(caller.certificate_sha256);
  e.set_peer_address(caller.peer);
  e.set_request_id(caller.request_id);
  return e;
}

void SetOutcome(const absl::Status& status, audit::AuditEvent* event) {
  event->set_status_code(static_cast<int32_t>(status.code()));
  event->set_status_message(std::string(status.message()));
}

}  // namespace cardvault::vault
