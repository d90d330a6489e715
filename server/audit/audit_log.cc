#include "server/audit/audit_log.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <pthread.h>

#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "server/util/big_endian.h"
#include "server/util/log.h"

namespace cardvault::audit {

absl::Time EventTime(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

void SetEventTime(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t ms = absl::ToUnixMillis(t);
  out->set_seconds(ms / 1000);
  out->set_nanos(static_cast<int32_t>((ms % 1000) * 1000000));
}

AuditEvent ServerEvent(::cardvault::v1::EventType type, absl::Time now) {
  AuditEvent event;
  SetEventTime(now, event.mutable_event_time());
  event.set_event_type(type);
  event.set_identity(std::string(kServerIdentity));
  return event;
}
namespace {

constexpr absl::string_view kMacLabel = "cardvault/audit-record";
const std::string kZeroMac(crypto::HmacSha256::kMacSize, '\0');

// What a batch call's event records of one of its items, moved out of the
// item's own event (which is not written).
BatchItem TakeItem(Entry& e) {
  BatchItem item;
  item.set_index(e.batch_index);
  item.mutable_token()->swap(*e.event.mutable_token());
  item.mutable_domain()->swap(*e.event.mutable_domain());
  item.mutable_purpose()->swap(*e.event.mutable_purpose());
  item.set_status_code(e.event.status_code());
  item.mutable_status_message()->swap(*e.event.mutable_status_message());
  item.mutable_detail()->swap(*e.event.mutable_detail());
  return item;
}

struct ParsedRecord {
  uint32_t key_version;
  absl::string_view mac;
  absl::string_view event_bytes;
};

absl::StatusOr<ParsedRecord> ParseRecord(absl::string_view record) {
  if (record.size() < kAuditRecordHeaderBytes ||
      record.size() > kAuditRecordHeaderBytes + kMaxAuditEventBytes ||
      static_cast<uint8_t>(record[0]) != kAuditRecordFormatV1) {
    return absl::DataLossError("audit record has a bad format or length");
  }
  return ParsedRecord{util::ReadBigEndian32(record.substr(1, 4)),
                      record.substr(5, crypto::HmacSha256::kMacSize),
                      record.substr(kAuditRecordHeaderBytes)};
}

// The bytes the chain MAC of a record covers (layout in the header).
std::string ChainInput(uint32_t key_version, uint64_t sequence,
                       absl::string_view previous_mac,
                       absl::string_view event_bytes) {
  std::string input(kMacLabel);
  input.push_back(static_cast<char>(kAuditRecordFormatV1));
  util::AppendBigEndian32(key_version, &input);
  util::AppendBigEndian64(sequence, &input);
  absl::StrAppend(&input, previous_mac, event_bytes);
  return input;
}

constexpr absl::string_view kAnchorLabel = "cardvault/audit-anchor";

struct Anchor {
  uint32_t key_version;
  uint64_t sequence;
  int64_t time_ms;
  std::string mac;
};

}  // namespace

absl::StatusOr<AuditEvent> DecodeAuditEvent(absl::string_view record) {
  absl::StatusOr<ParsedRecord> parsed = ParseRecord(record);
  if (!parsed.ok()) return parsed.status();
  AuditEvent event;
  if (!event.ParseFromArray(parsed->event_bytes.data(),
                            static_cast<int>(parsed->event_bytes.size()))) {
    return absl::DataLossError("audit event does not decode");
  }
  return event;
}

std::string SerializeDeterministic(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::io::StringOutputStream stream(&out);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  message.SerializeToCodedStream(&coded);
  coded.Trim();
  return out;
}

absl::StatusOr<std::string> RecordMac(absl::string_view record) {
  absl::StatusOr<ParsedRecord> parsed = ParseRecord(record);
  if (!parsed.ok()) return parsed.status();
  return std::string(parsed->mac);
}

absl::StatusOr<uint32_t> RecordKeyVersion(absl::string_view record) {
  absl::StatusOr<ParsedRecord> parsed = ParseRecord(record);
  if (!parsed.ok()) return parsed.status();
  return parsed->key_version;
}

absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(
    const storage::AuditStore* store, const storage::TransactionalStore* writer,
    std::unique_ptr<crypto::HmacSha256> key, uint32_t key_version,
    Options options) {
  if (store == nullptr || writer == nullptr || key == nullptr ||
      options.max_batch == 0 || options.max_pending_events == 0) {
    return absl::InvalidArgumentError("bad audit log arguments");
  }
  // The head must be readable before anything is accepted.
  if (absl::StatusOr<storage::ChainHead> head = writer->ChainHeadNow();
      !head.ok()) {
    return head.status();
  }
  std::unique_ptr<AuditLog> log(
      new AuditLog(store, writer, std::move(key), key_version, options));
  log->writer_ = std::thread([raw = log.get()] { raw->WriterLoop(); });
  log->completer_ = std::thread([raw = log.get()] { raw->CompletionLoop(); });
  if (!options.defer_background_jobs) log->StartBackgroundJobs();
  return log;
}

void AuditLog::StartBackgroundJobs() {
  if (background_started_.exchange(true)) return;
  if (options_.refusals.per_minute > 0) {
    summarizer_ = std::thread([raw = this] {
      while (!raw->stop_summaries_.WaitForNotificationWithTimeout(
          raw->options_.refusals.interval)) {
        raw->WriteRefusalSummaries();
      }
      raw->WriteRefusalSummaries();  // closing: nothing counted is lost
    });
  }
  if (options_.purge_interval > absl::ZeroDuration()) {
    purger_ = std::thread([raw = this] {
      do {
        absl::StatusOr<uint64_t> purged = raw->Purge(absl::Now());
        if (!purged.ok()) {
          util::LogError(absl::StrCat("audit retention purge failed: ",
                                      purged.status().ToString()));
        }
      } while (!raw->stop_purger_.WaitForNotificationWithTimeout(
          raw->options_.purge_interval));
    });
  }
}

AuditLog::AuditLog(const storage::AuditStore* store,
                   const storage::TransactionalStore* writer,
                   std::unique_ptr<crypto::HmacSha256> key,
                   uint32_t key_version, Options options)
    : store_(store),
      writer_store_(writer),
      key_(std::move(key)),
      key_version_(key_version),
      options_(options),
      marker_(key_.get()),
      refusals_(options.refusals) {}

AuditLog::~AuditLog() {
  stop_summaries_.Notify();
  if (summarizer_.joinable()) summarizer_.join();
  stop_purger_.Notify();
  if (purger_.joinable()) purger_.join();
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (writer_.joinable()) writer_.join();
  if (completer_.joinable()) completer_.join();
}

void AuditLog::WriteRefusalSummaries() const {
  std::vector<AuditEvent> summaries = refusals_.Take(options_.now());
  std::vector<AuditEvent> unwritten;
  for (AuditEvent& e : summaries) {
    if (!Append(e).ok()) unwritten.push_back(std::move(e));
  }
  if (!unwritten.empty()) refusals_.PutBack(std::move(unwritten));
}

absl::Status AuditLog::Append(AuditEvent event, Mutation mutation,
                              int* failed_condition) const {
  std::vector<Entry> entries(1);
  entries[0].event = std::move(event);
  entries[0].mutation = std::move(mutation);
  AppendAll(entries);
  if (failed_condition != nullptr) {
    *failed_condition = entries[0].failed_condition;
  }
  return entries[0].result;
}

void AuditLog::AppendAll(std::vector<Entry>& entries) const {
  if (entries.empty()) return;
  absl::Notification written;
  AppendAllAsync(std::move(entries), [&](std::vector<Entry>& done) {
    entries = std::move(done);
    written.Notify();
  });
  written.WaitForNotification();
}

void AuditLog::AppendAllAsync(std::vector<Entry> entries,
                              AppendDone done) const {
  AppendAsync(std::nullopt, std::move(entries), std::move(done));
}

void AuditLog::AppendAsync(std::optional<AuditEvent> batch_call,
                           std::vector<Entry> entries, AppendDone done) const {
  if (entries.empty()) {
    std::move(done)(entries);
    return;
  }
  // The second line of recorded_value.h, on the caller's thread.
  if (batch_call.has_value()) SafeEvent(&*batch_call);
  for (Entry& e : entries) SafeEvent(&e.event);
  // Refused items of a batch past the caller's rate are counted, not listed.
  if (batch_call.has_value()) {
    AuditEvent probe = *batch_call;
    const absl::Time now = options_.now();
    for (Entry& e : entries) {
      if (!e.mutation.conditions.empty() || !e.mutation.writes.empty() ||
          !e.mutation.counter_adds.empty()) {
        continue;
      }
      probe.set_status_code(e.event.status_code());
      if (IsSummarisableRefusal(probe) && !refusals_.Admit(probe, now)) {
        e.summarised = true;
        ++summarised_refusals_;
      }
    }
  }
  // A refused single call past its caller's rate is counted, not recorded.
  if (!batch_call.has_value() && entries.size() == 1) {
    const Entry& e = entries[0];
    if (e.mutation.conditions.empty() && e.mutation.writes.empty() &&
        e.mutation.counter_adds.empty() && IsSummarisableRefusal(e.event) &&
        !refusals_.Admit(e.event, options_.now())) {
      ++summarised_refusals_;
      entries[0].result = absl::OkStatus();
      std::move(done)(entries);
      return;
    }
  }
  auto pending = std::make_unique<Pending>();
  pending->entries = std::move(entries);
  pending->done = std::move(done);
  pending->batch = std::move(batch_call);
  Enqueue(std::move(pending));
}

void AuditLog::Enqueue(std::unique_ptr<Pending> pending) const {
  {
    absl::MutexLock lock(&mu_);
    const size_t n = pending->entries.size();
    if (pending_events_ + n <= options_.max_pending_events) {
      pending_events_ += n;
      queue_.push_back(std::move(pending));
      return;
    }
  }
  overload_refusals_ += pending->entries.size();
  for (Entry& e : pending->entries) {
    e.result = absl::UnavailableError("audit trail overloaded; retry");
  }
  std::move(pending->done)(pending->entries);
}

void AuditLog::WriterLoop() {
  pthread_setname_np(pthread_self(), "audit-writer");  // for ps and perf
  while (true) {
    std::vector<std::unique_ptr<Pending>> batch;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](AuditLog* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
            return !self->queue_.empty() || self->stopping_;
          },
          this));
      if (queue_.empty()) break;  // stopping, nothing left
      // A caller's entries are never split across writes.
      size_t events = 0;
      while (!queue_.empty() && events < options_.max_batch) {
        events += queue_.front()->entries.size();
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    WriteBatch(batch);
    absl::MutexLock lock(&written_mu_);
    written_.push_back(std::move(batch));
  }
  absl::MutexLock lock(&written_mu_);
  writer_stopped_ = true;
}

void AuditLog::CompletionLoop() {
  pthread_setname_np(pthread_self(), "audit-done");
  while (true) {
    std::deque<std::vector<std::unique_ptr<Pending>>> groups;
    {
      absl::MutexLock lock(&written_mu_);
      written_mu_.Await(absl::Condition(
          +[](AuditLog* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->written_mu_) {
            return !self->written_.empty() || self->writer_stopped_;
          },
          this));
      if (written_.empty()) return;  // the writer stopped, all answered
      groups.swap(written_);
    }
    for (std::vector<std::unique_ptr<Pending>>& group : groups) {
      for (std::unique_ptr<Pending>& p : group) {
        std::move(p->done)(p->entries);
        absl::MutexLock lock(&mu_);
        pending_events_ -= p->entries.size();
      }
    }
  }
}

// Chains the events of a group of pending appends as the store admits
// their mutations: the describer of one group commit.
class AuditLog::GroupChainer : public storage::GroupDescriber {
 public:
  GroupChainer(const AuditLog& log,
               const std::vector<std::unique_ptr<Pending>>& batch)
      : log_(log), batch_(batch) {
    for (size_t p = 0; p < batch.size(); ++p) {
      for (size_t e = 0; e < batch[p]->entries.size(); ++e) {
        position_.emplace_back(p, e);
        group_.push_back(std::move(batch[p]->entries[e].mutation));
      }
    }
  }

  // The mutations of every entry, in group order.
  absl::Span<const storage::Transaction> group() const { return group_; }

  void Begin(const storage::ChainHead& head) override {
    // Never back into a restore's lost range, even after a failed write.
    sequence_ =
        std::max(head.sequence, log_.options_.resume_after_sequence) + 1;
    mac_ = head.sequence == 0 ? kZeroMac : head.mac;
    append_ = {};
    included_.clear();
    // Items taken into a batch event on an earlier attempt go back.
    absl::flat_hash_map<Pending*, int> next_item;
    for (auto& [pending, entry] : taken_) {
      PutBack(*entry,
              std::move(*pending->batch->mutable_items(next_item[pending]++)));
    }
    taken_.clear();
    for (const std::unique_ptr<Pending>& p : batch_) {
      if (p->batch.has_value()) {
        p->batch->clear_items();
        batch_bytes_[p.get()] = p->batch->ByteSizeLong();
      }
    }
  }

  bool Admit(size_t index, int failed_condition) override {
    const auto [p, i] = position_[index];
    Pending& pending = *batch_[p];
    Entry& e = pending.entries[i];
    e.failed_condition = failed_condition;
    e.result = absl::OkStatus();
    bool admitted = false;
    if (pending.batch.has_value() && e.summarised) {
      // Counted into a summary, not listed.
    } else if (failed_condition >= 0) {
      e.result = absl::AbortedError("a write condition did not hold");
    } else if (!pending.batch.has_value()) {
      admitted = Chain(e.event);
      if (!admitted)
        e.result = absl::InvalidArgumentError("audit event too large");
    } else {
      admitted = AddItem(pending, e);
    }
    if (admitted) included_.push_back(&e);
    // A batch call is one event listing the items written, chained after its
    // last entry.
    if (pending.batch.has_value() && i + 1 == pending.entries.size() &&
        pending.batch->items_size() > 0) {
      (void)Chain(*pending.batch);  // fits: items were counted against it
    }
    return admitted;
  }

  storage::ChainAppend Finish() override {
    append_.head_mac = mac_;
    for (const std::unique_ptr<Pending>& p : batch_) {
      if (p->purge_through > 0 && p->entries[0].result.ok()) {
        append_.purge_through = p->purge_through;
        append_.anchor = p->anchor;
      }
    }
    return std::move(append_);
  }

  // Chains `event` as the next record; false if it is too large.
  bool Chain(AuditEvent& event) {
    event.set_sequence(sequence_);
    const std::string event_bytes = SerializeDeterministic(event);
    if (event_bytes.size() > kMaxAuditEventBytes) return false;
    mac_ = log_.key_->Compute(
        ChainInput(log_.key_version_, sequence_, mac_, event_bytes));
    std::string record;
    record.reserve(kAuditRecordHeaderBytes + event_bytes.size());
    record.push_back(static_cast<char>(kAuditRecordFormatV1));
    util::AppendBigEndian32(log_.key_version_, &record);
    absl::StrAppend(&record, mac_, event_bytes);
    append_.records.emplace_back(sequence_, std::move(record));
    ++sequence_;
    return true;
  }

  // The entries written (for failing them closed).
  const std::vector<Entry*>& included() const { return included_; }
  uint64_t head_sequence() const { return sequence_ - 1; }
  const std::string& head_mac() const { return mac_; }

 private:
  // Moves `e`'s item into its batch call's event; false (and nothing moved)
  // when the event would grow past its bound.
  bool AddItem(Pending& pending, Entry& e) {
    BatchItem item = TakeItem(e);
    size_t& bytes = batch_bytes_[&pending];
    const size_t added = item.ByteSizeLong() + 8;  // with its tag and length
    if (bytes + added > kMaxAuditEventBytes) {
      // Beyond the configurable batch bound: planned again, and recorded in
      // the caller's next event.
      PutBack(e, std::move(item));
      e.result = absl::AbortedError("audit record of the batch is full");
      return false;
    }
    bytes += added;
    *pending.batch->add_items() = std::move(item);
    taken_.emplace_back(&pending, &e);
    return true;
  }

  // Gives an item taken into a batch event back to its entry's event.
  static void PutBack(Entry& e, BatchItem item) {
    e.event.mutable_token()->swap(*item.mutable_token());
    e.event.mutable_domain()->swap(*item.mutable_domain());
    e.event.mutable_purpose()->swap(*item.mutable_purpose());
    e.event.mutable_status_message()->swap(*item.mutable_status_message());
    e.event.mutable_detail()->swap(*item.mutable_detail());
  }

  const AuditLog& log_;
  const std::vector<std::unique_ptr<Pending>>& batch_;
  std::vector<std::pair<size_t, size_t>> position_;
  std::vector<storage::Transaction> group_;
  uint64_t sequence_ = 1;
  std::string mac_;
  storage::ChainAppend append_;
  std::vector<Entry*> included_;
  absl::flat_hash_map<const Pending*, size_t> batch_bytes_;
  // (call, entry) of every item moved into a batch event, in order.
  std::vector<std::pair<Pending*, Entry*>> taken_;
};

void AuditLog::WriteBatch(const std::vector<std::unique_ptr<Pending>>& batch) {
  GroupChainer chainer(*this, batch);
  absl::Status committed = writer_store_->CommitGroup(chainer.group(), chainer);
  if (committed.ok()) {
    if (chainer.included().empty()) return;
    const absl::Time now = absl::Now();
    if (options_.on_checkpoint &&
        now - last_checkpoint_ >= options_.checkpoint_interval) {
      last_checkpoint_ = now;
      options_.on_checkpoint(
          Checkpoint{chainer.head_sequence(), chainer.head_mac()});
    }
    return;
  }
  // Fail closed: no caller learns its write succeeded. The store keeps the
  // head, so whatever it did keep stays consistent.
  size_t failed = 0;
  for (const std::unique_ptr<Pending>& p : batch) {
    for (Entry& e : p->entries) {
      if (!e.result.ok() || (p->batch.has_value() && e.summarised)) continue;
      e.result = absl::UnavailableError(
          absl::IsUnknown(committed)
              ? "audit trail write outcome unknown; retry"
              : "audit trail unavailable");
      ++failed;
    }
  }
  write_failures_ += failed;
  util::LogError(
      absl::StrCat("AUDIT SINK FAILURE: ", failed,
                   " audit record(s) not written: ", committed.ToString()));
}

absl::Status AuditLog::Scan(
    uint64_t from_sequence,
    const std::function<bool(const AuditEvent&)>& visit) const {
  return store_->ScanAudit(
      from_sequence, [&](uint64_t sequence, absl::string_view record) {
        absl::StatusOr<AuditEvent> event = DecodeAuditEvent(record);
        if (!event.ok()) return true;
        event->set_sequence(sequence);
        return visit(*event);
      });
}

absl::StatusOr<uint64_t> AuditLog::Purge(absl::Time now) const {
  absl::MutexLock purge_lock(&purge_mu_);
  auto last = store_->LastAuditRecord();
  if (!last.ok()) return last.status();
  if (!last->has_value()) return 0;
  const uint64_t newest = (*last)->first;
  const int64_t cutoff_ms = absl::ToUnixMillis(now - options_.retention);
  uint64_t through = 0;
  int64_t through_ms = 0;
  std::string through_mac;
  absl::Status scan =
      store_->ScanAudit(1, [&](uint64_t sequence, absl::string_view record) {
        if (sequence >= newest) return false;
        absl::StatusOr<ParsedRecord> parsed = ParseRecord(record);
        absl::StatusOr<AuditEvent> event = DecodeAuditEvent(record);
        if (!parsed.ok() || !event.ok()) return false;  // Verify reports it
        const int64_t ms = event->event_time().seconds() * 1000 +
                           event->event_time().nanos() / 1000000;
        if (ms >= cutoff_ms) return false;
        through = sequence;
        through_ms = ms;
        through_mac = std::string(parsed->mac);
        return true;
      });
  if (!scan.ok()) return scan;
  if (through == 0) return 0;
  std::string anchor;
  anchor.push_back(static_cast<char>(kAuditAnchorFormatV1));
  util::AppendBigEndian32(key_version_, &anchor);
  util::AppendBigEndian64(through, &anchor);
  util::AppendBigEndian64(static_cast<uint64_t>(through_ms), &anchor);
  absl::StrAppend(&anchor, through_mac);
  absl::StrAppend(&anchor, key_->Compute(absl::StrCat(kAnchorLabel, anchor)));
  const uint64_t first_kept = through + 1;
  // The purge, its anchor and its record are one write.
  auto pending = std::make_unique<Pending>();
  pending->entries.resize(1);
  pending->entries[0].event = ServerEvent(v1::AUDIT_PURGE, now);
  pending->entries[0].event.set_detail(
      absl::StrCat("purged audit records 1..", through,
                   " (older than the retention period); chain anchored, "
                   "first kept ",
                   first_kept));
  pending->purge_through = through;
  pending->anchor = std::move(anchor);
  absl::Notification written;
  absl::Status result;
  pending->done = [&](std::vector<Entry>& done) {
    result = done[0].result;
    written.Notify();
  };
  Enqueue(std::move(pending));
  written.WaitForNotification();
  if (!result.ok()) return result;
  return through;
}

absl::StatusOr<ChainReport> AuditLog::Verify(
    const std::optional<Checkpoint>& checkpoint) const {
  absl::MutexLock purge_lock(&purge_mu_);
  return VerifyStoredChain(*store_, *key_, key_version_, options_.retention,
                           absl::Now(), checkpoint);
}

absl::StatusOr<ChainReport> VerifyStoredChain(
    const storage::AuditStore& store, const crypto::HmacSha256& key,
    uint32_t key_version, absl::Duration retention, absl::Time now,
    const std::optional<Checkpoint>& checkpoint) {
  const storage::AuditStore* store_ = &store;
  const crypto::HmacSha256* key_ = &key;
  const uint32_t key_version_ = key_version;
  ChainReport report;
  std::string previous = kZeroMac;
  std::string checkpoint_mac;
  uint64_t expected = 1;
  absl::StatusOr<std::optional<std::string>> anchor = store_->AuditAnchor();
  if (!anchor.ok()) return anchor.status();
  if (anchor->has_value()) {
    const std::string& a = **anchor;
    if (a.size() != kAuditAnchorBytes ||
        static_cast<uint8_t>(a[0]) != kAuditAnchorFormatV1 ||
        !key_->Verify(absl::StrCat(kAnchorLabel, a.substr(0, 53)),
                      a.substr(53))) {
      report.intact = false;
      report.first_bad_sequence = 1;
      report.problem = "retention anchor does not verify";
      return report;
    }
    const uint64_t sequence = util::ReadBigEndian64(a.substr(5, 8));
    const int64_t time_ms =
        static_cast<int64_t>(util::ReadBigEndian64(a.substr(13, 8)));
    if (absl::FromUnixMillis(time_ms) > now - retention) {
      report.intact = false;
      report.first_bad_sequence = 1;
      report.problem = "records were purged before the retention period ended";
      return report;
    }
    expected = sequence + 1;
    previous = a.substr(21, 32);
  }
  auto fail = [&](uint64_t sequence, absl::string_view problem) {
    report.intact = false;
    report.first_bad_sequence = sequence;
    report.problem = std::string(problem);
    return false;
  };
  absl::Status scanned = store_->ScanAudit(1, [&](uint64_t sequence,
                                                  absl::string_view record) {
    absl::StatusOr<ParsedRecord> parsed = ParseRecord(record);
    if (sequence != expected) {
      // The one gap a chain may have: the range a restore lost, skipped by
      // the RESTORE event that follows it (its MAC, checked below, covers
      // its sequence and links it to the backup's head).
      AuditEvent restore;
      const bool skipped =
          parsed.ok() &&
          restore.ParseFromArray(
              parsed->event_bytes.data(),
              static_cast<int>(parsed->event_bytes.size())) &&
          restore.event_type() == v1::RESTORE &&
          restore.restore().lost_from() == expected &&
          restore.restore().lost_through() + 1 == sequence &&
          restore.restore().backup_head().sequence() + 1 == expected &&
          restore.restore().backup_head().mac() == previous;
      if (!skipped) {
        return fail(expected,
                    absl::StrCat("record ", expected, " is missing (next is ",
                                 sequence, ")"));
      }
      expected = sequence;
    }
    if (!parsed.ok()) return fail(sequence, parsed.status().message());
    if (parsed->key_version != key_version_) {
      return fail(sequence, "record names an unknown audit key");
    }
    if (!key_->Verify(ChainInput(parsed->key_version, sequence, previous,
                                 parsed->event_bytes),
                      parsed->mac)) {
      return fail(sequence, "chain MAC does not verify");
    }
    AuditEvent event;
    if (!event.ParseFromArray(parsed->event_bytes.data(),
                              static_cast<int>(parsed->event_bytes.size())) ||
        event.sequence() != sequence) {
      return fail(sequence, "event does not decode to its own sequence");
    }
    previous = std::string(parsed->mac);
    if (event.event_type() == v1::RESTORE) {
      report.restores.push_back({.sequence = sequence,
                                 .time = EventTime(event.event_time()),
                                 .restore = event.restore()});
    }
    if (checkpoint.has_value() && sequence == checkpoint->sequence) {
      checkpoint_mac = previous;
    }
    report.records_checked++;
    report.head_sequence = sequence;
    report.head_mac = previous;
    ++expected;
    return true;
  });
  if (!scanned.ok()) return scanned;
  if (report.intact && checkpoint.has_value() && checkpoint->sequence > 0 &&
      checkpoint_mac != checkpoint->mac) {
    // A restore from a backup replaced the records after the backup's head;
    // a checkpoint exported before it may lie in what it lost. That is
    // reported as the restore, not as truncation. Only when the restore
    // knew what it lost: the records written after a restore take the
    // sequences from its lost_from on, so an unknown (unbounded) range would
    // excuse every later checkpoint cut off by truncation.
    for (const RestoreMark& r : report.restores) {
      const uint64_t from = r.restore.lost_from();
      const uint64_t through = r.restore.lost_through();
      if (checkpoint->sequence >= from && from > 0 && through > 0 &&
          checkpoint->sequence <= through &&
          (checkpoint->sequence != through ||
           r.restore.lost_head_mac().empty() ||
           r.restore.lost_head_mac() == checkpoint->mac)) {
        report.checkpoint_lost_in_restore = r.sequence;
        break;
      }
    }
  }
  if (report.intact && checkpoint.has_value() && checkpoint->sequence > 0 &&
      report.checkpoint_lost_in_restore == 0) {
    if (checkpoint->sequence > report.head_sequence) {
      report.intact = false;
      report.first_bad_sequence = report.head_sequence + 1;
      report.problem = absl::StrCat("chain ends at ", report.head_sequence,
                                    " before checkpoint ", checkpoint->sequence,
                                    " (truncated)");
    } else if (checkpoint_mac != checkpoint->mac) {
      report.intact = false;
      report.first_bad_sequence = checkpoint->sequence;
      report.problem = "record differs from the checkpoint";
    }
    for (const RestoreMark& r : report.restores) {
      if (!report.intact && r.restore.lost_from() > 0 &&
          r.restore.lost_through() == 0 &&
          checkpoint->sequence >= r.restore.lost_from()) {
        absl::StrAppend(&report.problem, "; or lost in the restore at ",
                        r.sequence, ", whose lost range (from ",
                        r.restore.lost_from(), ") is unknown");
      }
    }
  }
  return report;
}

}  // namespace cardvault::audit
