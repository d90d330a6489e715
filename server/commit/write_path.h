// The write path of every token write: each event of the audit trail is
// appended here together with the token data it describes (its mutation),
// in one transaction of the store (storage/transaction.h), so that a
// Tokenize's record is never separate from its token.
//
// Appends are group-committed: one writer thread takes every pending event,
// has the store check their conditions, chains the admitted ones in order
// (audit/audit_chain.h) and commits them with their token data in one
// durable write, so concurrent requests share one fsync or commit. The
// completions of a written group run on a second thread, in order, while
// the writer goes on to the next group: no thread waits for the fsync per
// request, and answering the callers (a gRPC send each) does not delay the
// next write.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_COMMIT_WRITE_PATH_H_
#define CARDVAULT_SERVER_COMMIT_WRITE_PATH_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/audit/audit_chain.h"
#include "server/audit/recorded_value.h"
#include "server/audit/refusal_summary.h"
#include "server/crypto/hmac_sha256.h"
#include "server/storage/token_store.h"
#include "server/storage/transaction.h"

namespace cardvault::commit {

using audit::AuditEvent;
using audit::BatchItem;
using audit::ChainReport;
using audit::Checkpoint;
using audit::RefusalSummary;
using audit::ValueMarker;

// Token data changed in the same atomic write as an audit event, provided
// every condition holds at the moment of the write (checked by the store at
// commit: storage/transaction.h).
using Mutation = storage::Transaction;

// One event to append with its mutation, and what became of it.
struct Entry {
  AuditEvent event;
  Mutation mutation;
  // Outputs: OK once durable; ABORTED (nothing written) when condition
  // `failed_condition` did not hold; UNAVAILABLE when the write failed.
  absl::Status result;
  int failed_condition = -1;
  // Position of the item in its batch call (AppendAsync of a batch only).
  uint32_t batch_index = 0;
  // A refused batch item past its caller's recording rate: counted into a
  // summary instead of listed (set by AppendAsync).
  bool summarised = false;
};

class WritePath {
 public:
  struct Options {
    // Most events chained into one write.
    size_t max_batch = 1024;
    // At most this often (and after the first write) the chain head is
    // handed to `on_checkpoint`, e.g. to be logged, so that an operator can
    // export it and later detect truncation.
    absl::Duration checkpoint_interval = absl::Minutes(5);
    std::function<void(const Checkpoint&)> on_checkpoint;
    // Records are kept at least this long (PCI DSS 10.5.1 asks for 12
    // months); Purge removes only older ones.
    absl::Duration retention = absl::Hours(24 * 400);
    // Most events appended and not yet answered (queued, being written or
    // awaiting their completion). An append beyond it is refused at once
    // with UNAVAILABLE and nothing written, so a flood costs bounded
    // memory. Default 32768 (at least a batch of tokens.max_batch_items,
    // 10,000, fits): about 16 MiB of events and records.
    size_t max_pending_events = 32768;
    // Refused calls past this rate per caller are counted into summary
    // records instead (refusal_summary.h).
    RefusalSummary::Options refusals;
    // After a restore that lost records up to this sequence: the next record
    // takes the sequence after it, so that no sequence is used twice and a
    // checkpoint exported after the restore can never be taken for one it
    // lost. 0 (the default): the next after the head.
    uint64_t resume_after_sequence = 0;
    // Starts the summary thread only at StartBackgroundJobs, so that a
    // restore's RESTORE event is the first record after it. Default false.
    bool defer_background_jobs = false;
    // Written into every event as AuditEvent.node (several nodes on one
    // trail). Default empty.
    std::string node;
    // Clock of event times that the log makes itself (summaries, purges).
    std::function<absl::Time()> now = [] { return absl::Now(); };
  };

  // Starts the writer thread, which commits through `writer` and reads the
  // trail from `store`; both must outlive the log.
  static absl::StatusOr<std::unique_ptr<WritePath>> Open(
      const storage::AuditStore* store,
      const storage::TransactionalStore* writer,
      std::unique_ptr<crypto::HmacSha256> key, uint32_t key_version,
      Options options);

  WritePath(const WritePath&) = delete;
  WritePath& operator=(const WritePath&) = delete;
  // Finishes pending appends and stops the writer.
  ~WritePath();

  // Starts the summary thread (Options::defer_background_jobs); once only.
  void StartBackgroundJobs();

  // Appends `event` (its sequence is assigned here) and, in the same atomic
  // write, `mutation`. Returns once both are durable. ABORTED (and nothing
  // written) if a condition of `mutation` does not hold, its index in
  // `*failed_condition` when given; UNAVAILABLE if the write fails, in which
  // case the caller must fail closed.
  absl::Status Append(AuditEvent event, Mutation mutation = {},
                      int* failed_condition = nullptr) const;

  // Appends every entry in one atomic, durable write (entries whose
  // conditions fail are left out) and sets each entry's result.
  void AppendAll(std::vector<Entry>& entries) const;

  // Runs once the entries of an AppendAllAsync are written or refused, with
  // each entry's result set.
  using AppendDone = absl::AnyInvocable<void(std::vector<Entry>&) &&>;

  // As AppendAll, without waiting: `done` runs after the write, on the
  // log's completion thread. It must be quick and must not wait for this
  // log (no Append from inside it): later completions wait for it.
  void AppendAllAsync(std::vector<Entry> entries, AppendDone done) const;

  // As AppendAllAsync; when `batch_call` is set, the entries are the items
  // of one batch call, recorded as one event: `batch_call` (caller, RPC,
  // time) with one BatchItem per entry written, taken from the entry's event
  // (token, domain, purpose, outcome, detail), which is consumed. One
  // record, one MAC per call instead of one per item.
  void AppendAsync(std::optional<AuditEvent> batch_call,
                   std::vector<Entry> entries, AppendDone done) const;

  // Visits every stored event from `from_sequence` on, in order, until
  // `visit` returns false. Records that do not decode are skipped here;
  // Verify reports them.
  absl::Status Scan(uint64_t from_sequence,
                    const std::function<bool(const AuditEvent&)>& visit) const;

  // Verifies the whole chain: every sequence present from 1 without gaps,
  // every MAC correct, every event decodable with its own sequence. With a
  // `checkpoint` exported earlier, also that the chain still holds it, which
  // detects truncation of the tail.
  absl::StatusOr<ChainReport> Verify(
      const std::optional<Checkpoint>& checkpoint = std::nullopt) const;

  // Purges records whose event time is before `now - retention`, oldest
  // first, keeping at least the newest record, and records the purge as an
  // AUDIT_PURGE event, in one write that holds only if `fence` (the
  // background lease, coordination/job_lease.h) still does: ABORTED
  // otherwise. Returns how many records were purged.
  absl::StatusOr<uint64_t> Purge(
      absl::Time now,
      const std::optional<storage::Condition>& fence = std::nullopt) const;

  // Number of appends that failed to reach storage (for alerting).
  uint64_t write_failures() const { return write_failures_.load(); }

  // Events refused because max_pending_events were pending (for alerting).
  uint64_t overload_refusals() const { return overload_refusals_.load(); }

  // Refused calls counted into summaries instead of recorded one by one.
  uint64_t summarised_refusals() const { return summarised_refusals_.load(); }

  // Writes the summaries of refusals counted so far (also done every
  // Options::refusals.interval, and when the log closes).
  void WriteRefusalSummaries() const;

  // The audit key's MAC of `data`, for what the vault keeps beside its
  // trail and must be able to prove unchanged (backup manifests). `data`
  // must begin with a label of its own kind, so that no such MAC is ever
  // valid as a chain MAC or a marker.
  std::string Authenticate(absl::string_view data) const {
    return key_->Compute(data);
  }

  // Markers of unverified values, under this log's key (recorded_value.h).
  const ValueMarker& marker() const { return marker_; }

 private:
  // One caller's entries, written together, and its completion.
  struct Pending {
    std::vector<Entry> entries;
    AppendDone done;
    // Set for a batch call: the entries are items of this one event.
    std::optional<AuditEvent> batch;
    // A retention purge recorded by the single entry (Purge).
    uint64_t purge_through = 0;
    std::optional<std::string> anchor;
  };

  class GroupChainer;

  WritePath(const storage::AuditStore* store,
            const storage::TransactionalStore* writer,
            std::unique_ptr<crypto::HmacSha256> key, uint32_t key_version,
            Options options);
  // Queues `pending` for the writer, or refuses it at once when
  // max_pending_events are pending.
  void Enqueue(std::unique_ptr<Pending> pending) const;
  void WriterLoop();
  // Runs the completions of written groups, oldest first.
  void CompletionLoop();
  void WriteBatch(const std::vector<std::unique_ptr<Pending>>& batch);

  const storage::AuditStore* const store_;
  const storage::TransactionalStore* const writer_store_;
  const std::unique_ptr<crypto::HmacSha256> key_;
  const uint32_t key_version_;
  const Options options_;
  const ValueMarker marker_;

  // Only the writer thread touches it.
  absl::Time last_checkpoint_ = absl::InfinitePast();

  mutable absl::Mutex mu_;
  mutable std::deque<std::unique_ptr<Pending>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  mutable std::atomic<uint64_t> write_failures_{0};
  mutable std::atomic<uint64_t> overload_refusals_{0};
  mutable std::atomic<uint64_t> summarised_refusals_{0};
  mutable RefusalSummary refusals_;
  // Events appended whose completion has not run yet.
  mutable size_t pending_events_ ABSL_GUARDED_BY(mu_) = 0;
  // Groups written (or refused) whose completions have not run yet.
  absl::Mutex written_mu_;
  std::deque<std::vector<std::unique_ptr<Pending>>> written_
      ABSL_GUARDED_BY(written_mu_);
  bool writer_stopped_ ABSL_GUARDED_BY(written_mu_) = false;
  // Purge and Verify read the anchor and the records as one consistent view.
  mutable absl::Mutex purge_mu_;
  std::thread writer_;
  std::thread completer_;
  std::atomic<bool> background_started_{false};
  absl::Notification stop_summaries_;
  std::thread summarizer_;
};

}  // namespace cardvault::commit

#endif  // CARDVAULT_SERVER_COMMIT_WRITE_PATH_H_
