#include "server/audit/refusal_summary.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/audit/audit_chain.h"

namespace cardvault::audit {
namespace {

using ::cardvault::v1::AuditEvent;

// Codes of refusals made from the request and the caller alone.
bool IsRefusalCode(int code) {
  switch (static_cast<absl::StatusCode>(code)) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kResourceExhausted:
      return true;
    default:
      return false;
  }
}

}  // namespace

bool IsSummarisableRefusal(const AuditEvent& event) {
  return !event.rpc().empty() && event.items_size() == 0 &&
         IsRefusalCode(event.status_code());
}

bool RefusalSummary::Admit(const AuditEvent& event, absl::Time now) {
  if (options_.per_minute == 0) return true;
  const std::string key =
      absl::StrCat(event.identity(), "\n", event.certificate_sha256());
  absl::MutexLock lock(&mu_);
  auto it = callers_.find(key);
  if (it == callers_.end()) {
    if (callers_.size() >= options_.max_callers) {
      Count(others_, event, now);
      return false;
    }
    it = callers_.emplace(key, Caller{}).first;
  }
  Caller& c = it->second;
  if (c.bucket.TryTake(now, PerSecond(), options_.per_minute)) return true;
  Count(c, event, now);
  return false;
}

void RefusalSummary::Count(Caller& c, const AuditEvent& event, absl::Time now) {
  const absl::Time at = EventTime(event.event_time());
  if (c.counted == 0) {
    c.first = at;
    c.who.Clear();
    c.who.set_identity(event.identity());
    c.who.set_identity_source(event.identity_source());
    c.who.set_certificate_serial(event.certificate_serial());
    c.who.set_certificate_sha256(event.certificate_sha256());
  }
  c.who.set_peer_address(event.peer_address());
  c.last = std::max(at, now);
  ++c.counted;
  // RPC names and codes are the server's own, so this map stays small.
  absl::string_view name = event.rpc();
  if (size_t slash = name.rfind('/'); slash != absl::string_view::npos) {
    name.remove_prefix(slash + 1);
  }
  ++c.by_rpc_and_code[absl::StrCat(
      name, " ",
      absl::StatusCodeToString(
          static_cast<absl::StatusCode>(event.status_code())))];
}

std::vector<AuditEvent> RefusalSummary::Take(absl::Time now) {
  std::vector<AuditEvent> out;
  auto summarise = [&](Caller& c, bool others) {
    if (c.counted == 0) return;
    AuditEvent e = c.who;
    if (others) {
      e.Clear();
      e.set_identity("<other callers>");
    }
    e.set_event_type(::cardvault::v1::REFUSALS_SUMMARY);
    SetEventTime(c.first, e.mutable_event_time());
    e.set_refused_calls(c.counted);
    std::vector<std::string> parts;
    for (const auto& [what, n] : c.by_rpc_and_code) {
      parts.push_back(absl::StrCat(what, " x", n));
    }
    e.set_detail(absl::StrCat(c.counted,
                              " refused calls over the recording "
                              "rate, last at ",
                              absl::FormatTime(c.last), ": ",
                              absl::StrJoin(parts, ", ")));
    out.push_back(std::move(e));
    c.counted = 0;
    c.by_rpc_and_code.clear();
  };
  absl::MutexLock lock(&mu_);
  for (auto it = callers_.begin(); it != callers_.end();) {
    Caller& c = it->second;
    summarise(c, false);
    if (c.bucket.FullAt(now, PerSecond(), options_.per_minute)) {
      callers_.erase(it++);
    } else {
      ++it;
    }
  }
  summarise(others_, true);
  return out;
}

void RefusalSummary::PutBack(std::vector<AuditEvent> summaries) {
  absl::MutexLock lock(&mu_);
  for (AuditEvent& e : summaries) {
    const std::string key =
        absl::StrCat(e.identity(), "\n", e.certificate_sha256());
    auto [it, inserted] = callers_.try_emplace(key);
    Caller& c = it->second;
    if (c.counted == 0) {
      c.who = e;
      c.who.clear_detail();
      c.who.clear_refused_calls();
      c.first = EventTime(e.event_time());
      c.last = c.first;
    }
    // A caller forgotten since: its bucket starts empty at the summary.
    if (inserted) c.bucket.Start(c.first, 0);
    c.counted += e.refused_calls();
    c.by_rpc_and_code["(summary not written before)"] += e.refused_calls();
  }
}

}  // namespace cardvault::audit
