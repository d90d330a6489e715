// The lease under which one node at a time runs the vault's background work
// (re-encryption passes, audit retention purges, the TTL sweep), so that
// several nodes on one store do not race one another, and another node
// resumes the work once the holder dies (its lease expires).
//
// The lease is two rows of Table::kShared, changed only by compare-and-set:
//
//   "lease/<name>"        the holder's claim, format 1, byte by byte:
//     offset  size  field
//     0       1     format version, kLeaseFormatV1 = 0x01
//     1       8     fence, uint64 big-endian (the number the claim was taken
//                   with; see "fence/<name>")
//     9       8     expires, Unix milliseconds, uint64 big-endian, by the
//                   holder's clock when it wrote the claim
//     17      1     holder name length H, 1..kMaxLeaseHolderBytes
//     18      H     holder name (the node name, printable ASCII)
//
//   "fence/<name>"        the fence: uint64 big-endian, +1 at every change
//                         of holder, never lowered
//
// A node takes the lease when there is no claim, the claim has expired by
// its own clock, the claim has not changed for ttl + max_clock_skew since
// this node first read it (so a claim written with an expiry far ahead, by
// hand or by a node with a wrong clock, stops nothing for longer), or the
// claim is its own name's from an earlier process (a restarted node; node
// names must be unique), raising the fence in the same write, and renews its
// own claim (same fence) every ttl/3. It treats itself as the holder only until
// ttl - max_clock_skew after it last wrote the claim (measured before the
// write), so two nodes never both believe they hold it while their clocks
// differ by less than max_clock_skew. A holder's writes are fenced: each
// carries the condition "fence/<name> still equals my fence" (Fence()), so a
// holder that stalled past its lease (a paused process) cannot write after
// another node took over, whatever the clocks say.
//
// Every change of holder is an audit event (LEASE) in the same atomic write
// as the claim; renewals are not events.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_COORDINATION_JOB_LEASE_H_
#define CARDVAULT_SERVER_COORDINATION_JOB_LEASE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/commit/write_path.h"
#include "server/storage/transaction.h"

namespace cardvault::coordination {

inline constexpr uint8_t kLeaseFormatV1 = 0x01;
inline constexpr size_t kMaxLeaseHolderBytes = 64;
inline constexpr size_t kMaxLeaseNameBytes = 32;

// A claim on a lease, as stored under "lease/<name>".
struct LeaseClaim {
  uint64_t fence = 0;
  absl::Time expires;
  std::string holder;
};
std::string EncodeLeaseClaim(const LeaseClaim& claim);
// DATA_LOSS for bytes that are not a claim of a known format.
absl::StatusOr<LeaseClaim> DecodeLeaseClaim(absl::string_view bytes);

// Shared-table keys of lease `name`.
std::string LeaseClaimKey(absl::string_view name);
std::string LeaseFenceKey(absl::string_view name);

class JobLease {
 public:
  struct Options {
    // Which lease ("background" for the vault's background work): printable
    // ASCII, 1..kMaxLeaseNameBytes.
    std::string name = "background";
    // This node (the holder name recorded in the claim and the trail).
    std::string holder;
    // How long a claim lasts unrenewed: how long the work pauses when its
    // holder dies. Default 15 s.
    absl::Duration ttl = absl::Seconds(15);
    // Most difference between two nodes' clocks the lease tolerates.
    // Default 2 s; must be under ttl / 3.
    absl::Duration max_clock_skew = absl::Seconds(2);
    // Take the lease once in Create, then start a thread that takes or
    // renews it every ttl / 3. Off: Step() by hand (tests).
    bool keep_renewing = true;
    std::function<absl::Time()> now = [] { return absl::Now(); };
  };

  // `store` and `write_path` (which records changes of holder) must
  // outlive the lease.
  static absl::StatusOr<std::unique_ptr<JobLease>> Create(
      const storage::Store* store, const commit::WritePath* write_path,
      Options options);
  // Stops renewing; the claim is left to expire (a node that stops hands
  // the work over after at most ttl, without a write that could fail).
  ~JobLease();

  JobLease(const JobLease&) = delete;
  JobLease& operator=(const JobLease&) = delete;

  // Takes the lease if it is free or expired, or renews this node's claim.
  // Whether this node holds it afterwards; an error when the store could
  // not be read or written (then it holds it no longer).
  absl::StatusOr<bool> Step() const;

  // Whether this node holds the lease now (by its own clock, within the
  // skew margin). Background work checks it before each step.
  bool held() const;

  // The condition that fences a write of the holder: the fence unchanged
  // since this node took the lease. nullopt when it does not hold it.
  std::optional<storage::Condition> Fence() const;

  // The fence number of this node's claim (0: never held).
  uint64_t fence() const;

  const std::string& holder() const { return options_.holder; }

 private:
  JobLease(const storage::Store* store, const commit::WritePath* write_path,
           Options options);
  // Writes `claim` if the stored rows are still `seen_claim` and
  // `seen_fence`: a renewal alone, a change of holder (from `previous`)
  // with the new fence and its audit record. Whether it was written.
  absl::StatusOr<bool> Claim(const std::optional<std::string>& seen_claim,
                             const std::optional<std::string>& seen_fence,
                             const LeaseClaim& claim,
                             const std::optional<LeaseClaim>& previous,
                             bool renewal) const;
  void Renewer();

  const storage::Store* const store_;
  const commit::WritePath* const write_path_;
  const Options options_;
  mutable absl::Mutex mu_;
  mutable uint64_t fence_ ABSL_GUARDED_BY(mu_) = 0;
  // This node holds the lease until then (by its own clock).
  mutable absl::Time held_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  mutable std::atomic<bool> stepped_{false};
  // Another node's claim as last read, and when this node first read it: a
  // claim left unchanged for ttl + max_clock_skew is dead, whatever expiry
  // it states (a live holder rewrites it every ttl/3).
  mutable std::string watched_claim_ ABSL_GUARDED_BY(mu_);
  mutable absl::Time watched_since_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Notification stop_;
  std::thread renewer_;
};

}  // namespace cardvault::coordination

#endif  // CARDVAULT_SERVER_COORDINATION_JOB_LEASE_H_
