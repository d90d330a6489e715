// The one rule for what an audit record takes from a request.
//
// First line: a value a caller sent is recorded as itself only once it has
// been validated as what it claims to be (a well-formed token, a domain or
// purpose the policy knows, an identity the policy names, an operation id of
// the server's form). Anything else is recorded as a marker that cannot hold
// card data:
//   "<unverified len=N mac=M>"
//   N: the value's length in bytes, decimal;
//   M: 16 letters a-p, the first 8 bytes of
//      HMAC-SHA256(audit key, "cardvault/audit-marker" || value), one letter
//      per nibble ('a' = 0): the same value gives the same marker under one
//      audit key, so repeated attempts can be told apart and correlated,
//      and nothing of the value can be learnt without the key. Letters, not
//      hex digits, so that no marker is ever a run of digits.
// Second line: every string of a record passes through SafeEvent (below)
// before it is chained, and every log line through util::Log; both apply
// util::SafeText (possible card numbers masked, control characters escaped,
// each field within its named bound).
//
// Thread safety: thread-safe (immutable; the key is thread-safe).
#ifndef CARDVAULT_SERVER_AUDIT_RECORDED_VALUE_H_
#define CARDVAULT_SERVER_AUDIT_RECORDED_VALUE_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"
#include "cardvault/v1/audit.pb.h"
#include "server/crypto/hmac_sha256.h"

namespace cardvault::audit {

// Bounds of the recorded fields (after SafeText), in bytes. A marker is at
// most kMaxMarkerBytes, so every field that may hold one can.
inline constexpr size_t kMaxMarkerBytes = 48;
inline constexpr size_t kMaxRecordedRpcBytes = 96;
inline constexpr size_t kMaxRecordedIdentityBytes = 256;
inline constexpr size_t kMaxRecordedPeerBytes = 128;
// A node name (ServerConfig.node_name, at most 64 characters).
inline constexpr size_t kMaxRecordedNodeBytes = 64;
inline constexpr size_t kMaxRecordedTokenBytes = 64;
inline constexpr size_t kMaxRecordedDomainBytes = 96;
inline constexpr size_t kMaxRecordedPurposeBytes = 64;
inline constexpr size_t kMaxRecordedStatusMessageBytes = 256;
inline constexpr size_t kMaxRecordedDetailBytes = 4096;

class ValueMarker {
 public:
  // `key` (the audit key) must outlive the marker.
  explicit ValueMarker(const crypto::HmacSha256* key) : key_(key) {}

  // The marker of `value` (see the file comment).
  std::string Mark(absl::string_view value) const;

  // `value` itself when `verified`, else its marker; "" stays "".
  std::string Recorded(absl::string_view value, bool verified) const {
    if (value.empty() || verified) return std::string(value);
    return Mark(value);
  }

 private:
  const crypto::HmacSha256* const key_;
};

// Applies the second line to every string field of `event` and its batch
// items, each within its bound, except the ones the server computes in a
// fixed form from a verified certificate or itself (certificate_serial,
// certificate_sha256, request_id: hex, whose digit runs are not card
// numbers). Cheap when nothing needs changing.
void SafeEvent(::cardvault::v1::AuditEvent* event);

}  // namespace cardvault::audit

#endif  // CARDVAULT_SERVER_AUDIT_RECORDED_VALUE_H_
