#include "server/coordination/job_lease.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/audit/audit_chain.h"
#include "server/util/log.h"
#include "server/util/safe_text.h"

namespace cardvault::coordination {
namespace {

constexpr size_t kClaimHeaderBytes = 18;

void AppendUint64(uint64_t v, std::string* out) {
  for (int i = 7; i >= 0; --i) out->push_back(static_cast<char>(v >> (8 * i)));
}

uint64_t ReadUint64(absl::string_view b) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(b[i]);
  return v;
}

bool Printable(absl::string_view s, size_t max) {
  if (s.empty() || s.size() > max) return false;
  for (char c : s) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

// The stored value under `key`, nullopt if none.
absl::StatusOr<std::optional<std::string>> Read(const storage::Store& store,
                                                const std::string& key) {
  absl::StatusOr<std::string> v = store.Get(storage::Table::kShared, key);
  if (absl::IsNotFound(v.status())) return std::nullopt;
  if (!v.ok()) return v.status();
  return *std::move(v);
}

std::string FenceBytes(uint64_t fence) {
  std::string out;
  AppendUint64(fence, &out);
  return out;
}

}  // namespace

std::string EncodeLeaseClaim(const LeaseClaim& claim) {
  std::string out(1, static_cast<char>(kLeaseFormatV1));
  AppendUint64(claim.fence, &out);
  AppendUint64(static_cast<uint64_t>(absl::ToUnixMillis(claim.expires)), &out);
  out.push_back(static_cast<char>(claim.holder.size()));
  out += claim.holder;
  return out;
}

absl::StatusOr<LeaseClaim> DecodeLeaseClaim(absl::string_view bytes) {
  if (bytes.size() < kClaimHeaderBytes + 1 ||
      static_cast<uint8_t>(bytes[0]) != kLeaseFormatV1) {
    return absl::DataLossError("lease claim of an unknown format");
  }
  const size_t holder_bytes = static_cast<uint8_t>(bytes[17]);
  // The holder's name goes into LEASE records and log lines: no digit run
  // that could be a card number, whoever wrote the row.
  const absl::string_view holder = bytes.substr(kClaimHeaderBytes);
  if (bytes.size() != kClaimHeaderBytes + holder_bytes ||
      !Printable(holder, kMaxLeaseHolderBytes) ||
      util::SafeText(holder, kMaxLeaseHolderBytes,
                     util::CardNumbers::kGroupedToo) != holder) {
    return absl::DataLossError("lease claim is malformed");
  }
  return LeaseClaim{.fence = ReadUint64(bytes.substr(1, 8)),
                    .expires = absl::FromUnixMillis(
                        static_cast<int64_t>(ReadUint64(bytes.substr(9, 8)))),
                    .holder = std::string(bytes.substr(kClaimHeaderBytes))};
}

std::string LeaseClaimKey(absl::string_view name) {
  return absl::StrCat("lease/", name);
}

std::string LeaseFenceKey(absl::string_view name) {
  return absl::StrCat("fence/", name);
}

absl::StatusOr<std::unique_ptr<JobLease>> JobLease::Create(
    const storage::Store* store, const commit::WritePath* write_path,
    Options options) {
  if (store == nullptr || write_path == nullptr || !options.now) {
    return absl::InvalidArgumentError("a lease needs a store and a clock");
  }
  if (!Printable(options.name, kMaxLeaseNameBytes) ||
      !Printable(options.holder, kMaxLeaseHolderBytes)) {
    return absl::InvalidArgumentError(
        "lease and holder names must be printable ASCII without spaces");
  }
  if (options.ttl < absl::Seconds(1) ||
      options.max_clock_skew < absl::ZeroDuration() ||
      options.max_clock_skew * 3 >= options.ttl) {
    return absl::InvalidArgumentError(
        "lease ttl must be at least 1 s and over 3 times the clock skew");
  }
  auto lease = std::unique_ptr<JobLease>(
      new JobLease(store, write_path, std::move(options)));
  if (lease->options_.keep_renewing) {
    (void)lease->Step();  // the renewer retries a failure
    lease->renewer_ = std::thread([l = lease.get()] { l->Renewer(); });
  }
  return lease;
}

JobLease::JobLease(const storage::Store* store,
                   const commit::WritePath* write_path, Options options)
    : store_(store), write_path_(write_path), options_(std::move(options)) {}

JobLease::~JobLease() {
  stop_.Notify();
  if (renewer_.joinable()) renewer_.join();
}

void JobLease::Renewer() {
  do {
    (void)Step();  // a failed step leaves the lease unheld until the next
  } while (!stop_.WaitForNotificationWithTimeout(options_.ttl / 3));
}

bool JobLease::held() const {
  const absl::Time now = options_.now();
  absl::MutexLock lock(&mu_);
  return now < held_until_;
}

uint64_t JobLease::fence() const {
  absl::MutexLock lock(&mu_);
  return fence_;
}

std::optional<storage::Condition> JobLease::Fence() const {
  const absl::Time now = options_.now();
  absl::MutexLock lock(&mu_);
  if (now >= held_until_) return std::nullopt;
  return storage::Condition{.table = storage::Table::kShared,
                            .key = LeaseFenceKey(options_.name),
                            .expected = FenceBytes(fence_)};
}

absl::StatusOr<bool> JobLease::Step() const {
  // Measured before anything is read: the claim runs from no later than
  // this, whenever the write lands.
  const absl::Time start = options_.now();
  auto lose = [&](absl::Status s) -> absl::StatusOr<bool> {
    absl::MutexLock lock(&mu_);
    held_until_ = absl::InfinitePast();
    if (!s.ok()) return s;
    return false;
  };
  const std::string claim_key = LeaseClaimKey(options_.name);
  absl::StatusOr<std::optional<std::string>> seen_claim =
      Read(*store_, claim_key);
  if (!seen_claim.ok()) return lose(seen_claim.status());
  absl::StatusOr<std::optional<std::string>> seen_fence =
      Read(*store_, LeaseFenceKey(options_.name));
  if (!seen_fence.ok()) return lose(seen_fence.status());
  uint64_t stored_fence = 0;
  if (seen_fence->has_value()) {
    if ((*seen_fence)->size() != 8) {
      return lose(absl::DataLossError("lease fence is malformed"));
    }
    stored_fence = ReadUint64(**seen_fence);
  }
  std::optional<LeaseClaim> previous;
  if (seen_claim->has_value()) {
    absl::StatusOr<LeaseClaim> decoded = DecodeLeaseClaim(**seen_claim);
    if (!decoded.ok()) return lose(decoded.status());
    previous = *std::move(decoded);
  }
  const bool mine =
      previous.has_value() && previous->holder == options_.holder &&
      previous->fence == stored_fence && previous->fence == fence();
  // Another node's claim stands until it expires by this node's clock, plus
  // the skew its clock may have.
  // Only this process's first step may take its own name's claim at once
  // (the earlier process is gone); later, a claim under this name that is
  // not this process's is another live node's (a duplicated node name),
  // and waits for its expiry like any other.
  const bool first_step = !stepped_.exchange(true);
  const bool restarted = first_step && previous.has_value() &&
                         previous->holder == options_.holder && !mine;
  if (!first_step && previous.has_value() &&
      previous->holder == options_.holder && !mine) {
    util::LogError(absl::StrCat(
        "ALERT another node holds the ", options_.name,
        " lease under this node's name: node names must be unique"));
  }
  bool unchanged_too_long = false;
  if (previous.has_value() && !mine) {
    absl::MutexLock lock(&mu_);
    if (watched_claim_ != **seen_claim) {
      watched_claim_ = **seen_claim;
      watched_since_ = start;
      if (previous->expires > start + options_.ttl + options_.max_clock_skew) {
        util::LogError(absl::StrCat(
            "ALERT the ", options_.name, " lease claim of ", previous->holder,
            " expires further ahead than its ttl allows; it is taken once "
            "unchanged for the ttl"));
      }
    }
    unchanged_too_long =
        start >= watched_since_ + options_.ttl + options_.max_clock_skew;
  }
  if (previous.has_value() && !mine && !restarted && !unchanged_too_long &&
      start < previous->expires + options_.max_clock_skew) {
    return lose(absl::OkStatus());
  }
  LeaseClaim claim{.fence = mine ? stored_fence : stored_fence + 1,
                   .expires = start + options_.ttl,
                   .holder = options_.holder};
  absl::StatusOr<bool> written =
      Claim(*seen_claim, *seen_fence, claim, previous, /*renewal=*/mine);
  if (!written.ok() || !*written) {
    return lose(written.ok() ? absl::OkStatus() : written.status());
  }
  absl::MutexLock lock(&mu_);
  fence_ = claim.fence;
  held_until_ = start + options_.ttl - options_.max_clock_skew;
  return true;
}

absl::StatusOr<bool> JobLease::Claim(
    const std::optional<std::string>& seen_claim,
    const std::optional<std::string>& seen_fence, const LeaseClaim& claim,
    const std::optional<LeaseClaim>& previous, bool renewal) const {
  const std::string claim_key = LeaseClaimKey(options_.name);
  const std::string fence_key = LeaseFenceKey(options_.name);
  const std::string encoded = EncodeLeaseClaim(claim);
  storage::Transaction t;
  t.conditions.push_back({storage::Table::kShared, claim_key, seen_claim});
  t.conditions.push_back({storage::Table::kShared, fence_key, seen_fence});
  t.writes.push_back({storage::Table::kShared, claim_key, encoded});
  absl::Status s;
  if (!renewal) {
    t.writes.push_back(
        {storage::Table::kShared, fence_key, FenceBytes(claim.fence)});
    audit::AuditEvent event =
        audit::ServerEvent(::cardvault::v1::LEASE, options_.now());
    event.set_detail(absl::StrCat(
        "lease ", options_.name, " taken by ", options_.holder, ", fence ",
        claim.fence,
        previous.has_value()
            ? absl::StrCat(
                  "; previous holder ", previous->holder, ", claim expired ",
                  absl::FormatTime(absl::RFC3339_sec, previous->expires,
                                   absl::UTCTimeZone()))
            : "; no previous holder"));
    int failed = -1;
    s = write_path_->Append(std::move(event), std::move(t), &failed);
    if (absl::IsAborted(s)) return false;  // another node won the race
  } else {
    s = storage::CommitUnaudited(*store_, t);
    if (absl::IsFailedPrecondition(s)) return false;
  }
  if (absl::IsUnknown(s)) {
    // Resolved by reading back: the claim carries this node's fence and
    // expiry, which no other node writes.
    absl::StatusOr<std::optional<std::string>> now = Read(*store_, claim_key);
    if (!now.ok()) return now.status();
    return *now == encoded;
  }
  if (!s.ok()) return s;
  return true;
}

}  // namespace cardvault::coordination
