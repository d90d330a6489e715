#include "server/vault/server_events.h"

#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/util/log.h"

namespace cardvault::vault {

absl::StatusOr<uint32_t> ServerEvents::RotateDataKey() const {
  const uint32_t old = keys_->primary_version();
  bool made_here = false;
  absl::StatusOr<uint32_t> rotated = keys_->Rotate(&made_here);
  if (!rotated.ok()) return rotated.status();
  // Another node's rotation is that node's event; this one only says so.
  if (absl::Status s = RecordKeyEvent(
          made_here
              ? absl::StrCat(
                    "rotated data keys on demand: ", DataKeyId(*rotated),
                    " generated in the HSM and made primary (", DataKeyId(old),
                    " now decrypt-only)")
              : absl::StrCat("rotation on demand found ", DataKeyId(*rotated),
                             " just made primary by another node (",
                             DataKeyId(old), " now decrypt-only)"));
      !s.ok()) {
    return s;
  }
  return rotated;
}

absl::Status ServerEvents::DestroyDataKey(uint32_t version) const {
  if (absl::Status s = keys_->Destroy(version); !s.ok()) return s;
  return RecordKeyEvent(
      absl::StrCat("destroyed data key ", DataKeyId(version),
                   ": no record used it; its wrapped copy is erased"));
}

void ServerEvents::RotateDueDataKey() const {
  const uint32_t old = keys_->primary_version();
  bool made_here = false;
  absl::StatusOr<std::optional<uint32_t>> rotated =
      keys_->RotateIfDue(&made_here);
  if (!rotated.ok()) {
    // Sealing goes on under the old key up to the hard limit; alert.
    util::LogError(absl::StrCat("ALERT data key rotation failed: ",
                                rotated.status().ToString()));
    return;
  }
  // Another call, or another node, rotated it (and records it).
  if (!rotated->has_value() || !made_here) return;
  (void)RecordKeyEvent(absl::StrCat(
      "rotated data keys: ", DataKeyId(**rotated),
      " generated in the HSM and made primary (", DataKeyId(old),
      " reached its encryption limit or cryptoperiod; now decrypt-only)"));
}

absl::Status ServerEvents::RecordKeyEvent(absl::string_view detail) const {
  audit::AuditEvent event = recorder_->ServerEvent(v1::KEY_EVENT);
  event.set_detail(std::string(detail));
  return trail_->Append(std::move(event));
}

absl::Status ServerEvents::RecordPolicyReload(const absl::Status& outcome,
                                              absl::string_view detail) const {
  audit::AuditEvent event = recorder_->ServerEvent(v1::POLICY_RELOAD);
  event.set_detail(std::string(detail));
  event.set_status_code(static_cast<int32_t>(outcome.code()));
  event.set_status_message(std::string(outcome.message()));
  return trail_->Append(std::move(event));
}

absl::Status ServerEvents::RecordLifecycle(v1::EventType type,
                                           absl::string_view detail) const {
  audit::AuditEvent event = recorder_->ServerEvent(type);
  event.set_detail(std::string(detail));
  return recorder_->Record(std::move(event), absl::OkStatus());
}

}  // namespace cardvault::vault
