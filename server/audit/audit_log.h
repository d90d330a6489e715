// The tamper-evident audit trail: an append-only chain of records, each
// carrying an HMAC-SHA256 over its content and its predecessor's MAC, under
// an audit key that exists outside the HSM only in locked memory (it is
// stored wrapped under the KEK). Rebuilding or editing the chain without that
// key is detected by Verify.
//
// Record (column family "audit", key = sequence as 8 bytes big-endian):
//   offset  size  field
//   0       1     record format version, kAuditRecordFormatV1 = 0x01
//   1       4     audit key version, uint32 big-endian
//   5       32    chain MAC
//   37      N     event: cardvault.v1.AuditEvent, deterministic protobuf
//                 encoding, N <= kMaxAuditEventBytes; its `sequence` equals
//                 the record's key. A batch call is one event listing its
//                 items (AppendAsync).
// chain MAC = HMAC-SHA256(audit key, "cardvault/audit-record" || format
//             version (1) || key version (4) || sequence (8, BE) ||
//             previous record's chain MAC (32; zeros for sequence 1) || event)
//
// Restore: the records a restore lost (after the restored backup's head) are
// never numbered again. The RESTORE event takes the sequence after the last
// lost one and is chained to the backup's head; Verify accepts that one gap
// because the event names it (lost_from, lost_through, backup head).
//
// Retention: records older than Options::retention (default 400 days, PCI
// DSS 10.5.1) may be purged, oldest first, never the newest. The purge
// replaces them with an anchor (key: sequence 0) so that the chain still
// verifies from the first record kept:
//   offset  size  field
//   0       1     anchor format version, kAuditAnchorFormatV1 = 0x01
//   1       4     audit key version, uint32 big-endian
//   5       8     sequence N of the last purged record, big-endian
//   13      8     event time of record N, Unix milliseconds, big-endian
//   21      32    chain MAC of record N
//   53      32    HMAC-SHA256(audit key, "cardvault/audit-anchor" || [0, 53))
// Verify refuses an anchor whose record N is younger than the retention
// period: records cannot be purged early, even by someone with file access.
//
// Appends are group-committed: one writer thread takes every pending event,
// chains them in order and writes them (with any new token records) in one
// synced RocksDB WriteBatch, so concurrent requests share one fsync. The
// completions of a written group run on a second thread, in order, while
// the writer goes on to the next group: no thread waits for the fsync per
// request, and answering the callers (a gRPC send each) does not delay the
// next write.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_AUDIT_AUDIT_LOG_H_
#define CARDVAULT_SERVER_AUDIT_AUDIT_LOG_H_

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
#include "cardvault/v1/audit.pb.h"
#include "server/audit/recorded_value.h"
#include "server/audit/refusal_summary.h"
#include "server/crypto/hmac_sha256.h"
#include "server/storage/token_store.h"
#include "server/storage/transaction.h"

namespace cardvault::audit {

using AuditEvent = ::cardvault::v1::AuditEvent;
using BatchItem = ::cardvault::v1::BatchItem;

// The identity recorded for what the server does on its own.
inline constexpr absl::string_view kServerIdentity = "cardvaultd";

// Writes `t`, to the millisecond, into an event's timestamp.
void SetEventTime(absl::Time t, google::protobuf::Timestamp* out);

// The time an event's timestamp holds.
absl::Time EventTime(const google::protobuf::Timestamp& t);

// An event of `type` done by the server itself at `now`.
AuditEvent ServerEvent(::cardvault::v1::EventType type, absl::Time now);

inline constexpr uint8_t kAuditRecordFormatV1 = 0x01;
inline constexpr size_t kAuditRecordHeaderBytes = 1 + 4 + 32;
// Bounds an event, a batch call's included: tokens.max_batch_items (at most
// 10,000) items of at most a few hundred bytes each.
inline constexpr size_t kMaxAuditEventBytes = 4 << 20;
inline constexpr uint8_t kAuditAnchorFormatV1 = 0x01;
inline constexpr size_t kAuditAnchorBytes = 1 + 4 + 8 + 8 + 32 + 32;

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

// A chain position exported to compare against later.
struct Checkpoint {
  uint64_t sequence = 0;
  std::string mac;
};

// A restore from a backup, as the chain records it (RESTORE event).
struct RestoreMark {
  uint64_t sequence = 0;
  absl::Time time;
  ::cardvault::v1::RestoreRecord restore;
};

// Result of a chain verification.
struct ChainReport {
  bool intact = true;
  uint64_t first_bad_sequence = 0;  // 0 when intact
  std::string problem;
  uint64_t records_checked = 0;
  uint64_t head_sequence = 0;  // last record that verified
  std::string head_mac;
  // Restores the chain records, oldest first.
  std::vector<RestoreMark> restores;
  // The RESTORE event whose lost range holds the checkpoint asked about,
  // when a restore (not truncation) is why the chain no longer holds it.
  // Only a known range (lost_through set) excuses a checkpoint: records
  // written after a restore reuse the sequences from lost_from on.
  uint64_t checkpoint_lost_in_restore = 0;
};

class AuditLog {
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
    // How often a background purge runs; zero = never (Purge by hand).
    absl::Duration purge_interval = absl::ZeroDuration();
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
    // Starts the purge and summary threads only at StartBackgroundJobs, so
    // that a restore's RESTORE event is the first record after it (a purge
    // first would break the chain at the restore's gap). Default false.
    bool defer_background_jobs = false;
    // Clock of event times that the log makes itself (summaries, purges).
    std::function<absl::Time()> now = [] { return absl::Now(); };
  };

  // Starts the writer thread, which commits through `writer` and reads the
  // trail from `store`; both must outlive the log.
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(
      const storage::AuditStore* store,
      const storage::TransactionalStore* writer,
      std::unique_ptr<crypto::HmacSha256> key, uint32_t key_version,
      Options options);

  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;
  // Finishes pending appends and stops the writer.
  ~AuditLog();

  // Starts the purge and summary threads (Options::defer_background_jobs);
  // once only.
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
  // AUDIT_PURGE event. Returns how many records were purged.
  absl::StatusOr<uint64_t> Purge(absl::Time now) const;

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

  AuditLog(const storage::AuditStore* store,
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
  absl::Notification stop_purger_;
  std::thread purger_;
  absl::Notification stop_summaries_;
  std::thread summarizer_;
};

// Verifies the chain stored in `store` under `key` (AuditLog::Verify, for a
// store no log writes to, such as a backup's): records purged by retention
// must be older than `now - retention`.
absl::StatusOr<ChainReport> VerifyStoredChain(
    const storage::AuditStore& store, const crypto::HmacSha256& key,
    uint32_t key_version, absl::Duration retention, absl::Time now,
    const std::optional<Checkpoint>& checkpoint = std::nullopt);

// `message` in deterministic protobuf encoding (map entries sorted), the
// form every stored and MAC'd message takes.
std::string SerializeDeterministic(const google::protobuf::Message& message);

// The chain MAC a stored record carries; DATA_LOSS if malformed.
absl::StatusOr<std::string> RecordMac(absl::string_view record);
// The audit key version a stored record names; DATA_LOSS if malformed.
absl::StatusOr<uint32_t> RecordKeyVersion(absl::string_view record);

// Decodes a stored record's event without verifying its MAC.
absl::StatusOr<AuditEvent> DecodeAuditEvent(absl::string_view record);

}  // namespace cardvault::audit

#endif  // CARDVAULT_SERVER_AUDIT_AUDIT_LOG_H_
