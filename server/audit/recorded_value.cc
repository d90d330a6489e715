#include "server/audit/recorded_value.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "server/util/safe_text.h"

namespace cardvault::audit {
namespace {

constexpr size_t kMarkerMacBytes = 8;

// True when SafeText would change nothing: printable ASCII without a
// backslash, no digit run of 12 or more, within `max_bytes`.
bool AlreadySafe(absl::string_view text, size_t max_bytes) {
  if (text.size() > max_bytes) return false;
  size_t digits = 0;
  for (char c : text) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u > 0x7e || c == '\\') return false;
    digits = absl::ascii_isdigit(u) ? digits + 1 : 0;
    if (digits >= util::kMinCardDigits) return false;
  }
  return true;
}

void MakeSafe(std::string* field, size_t max_bytes,
              util::CardNumbers rule = util::CardNumbers::kAnyWithin) {
  if (!AlreadySafe(*field, max_bytes)) {
    *field = util::SafeText(*field, max_bytes, rule);
  }
}

}  // namespace

std::string ValueMarker::Mark(absl::string_view value) const {
  const std::string mac = key_->Compute(
      absl::StrCat("cardvault/audit-marker", std::string(1, '\0'), value));
  std::string letters;
  for (size_t i = 0; i < kMarkerMacBytes; ++i) {
    const unsigned char b = static_cast<unsigned char>(mac[i]);
    letters.push_back(static_cast<char>('a' + (b >> 4)));
    letters.push_back(static_cast<char>('a' + (b & 0x0f)));
  }
  return absl::StrCat("<unverified len=", value.size(), " mac=", letters, ">");
}

void SafeEvent(::cardvault::v1::AuditEvent* e) {
  MakeSafe(e->mutable_rpc(), kMaxRecordedRpcBytes);
  MakeSafe(e->mutable_identity(), kMaxRecordedIdentityBytes);
  MakeSafe(e->mutable_peer_address(), kMaxRecordedPeerBytes);
  MakeSafe(e->mutable_node(), kMaxRecordedNodeBytes);
  MakeSafe(e->mutable_token(), kMaxRecordedTokenBytes,
           util::CardNumbers::kExactRuns);
  MakeSafe(e->mutable_domain(), kMaxRecordedDomainBytes);
  MakeSafe(e->mutable_purpose(), kMaxRecordedPurposeBytes);
  MakeSafe(e->mutable_status_message(), kMaxRecordedStatusMessageBytes);
  MakeSafe(e->mutable_detail(), kMaxRecordedDetailBytes);
  for (::cardvault::v1::BatchItem& item : *e->mutable_items()) {
    MakeSafe(item.mutable_token(), kMaxRecordedTokenBytes,
             util::CardNumbers::kExactRuns);
    MakeSafe(item.mutable_domain(), kMaxRecordedDomainBytes);
    MakeSafe(item.mutable_purpose(), kMaxRecordedPurposeBytes);
    MakeSafe(item.mutable_status_message(), kMaxRecordedStatusMessageBytes);
    MakeSafe(item.mutable_detail(), kMaxRecordedDetailBytes);
  }
}

}  // namespace cardvault::audit
