#include "server/commit/write_path.h"

#include <pthread.h>

#include <algorithm>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "server/util/log.h"

namespace cardvault::commit {
namespace {

using audit::DecodeAuditEvent;
using audit::IsSummarisableRefusal;
using audit::kMaxAuditEventBytes;
using audit::SafeEvent;
using audit::ServerEvent;

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

}  // namespace

absl::StatusOr<std::unique_ptr<WritePath>> WritePath::Open(
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
  std::unique_ptr<WritePath> log(
      new WritePath(store, writer, std::move(key), key_version, options));
  log->writer_ = std::thread([raw = log.get()] { raw->WriterLoop(); });
  log->completer_ = std::thread([raw = log.get()] { raw->CompletionLoop(); });
  if (!options.defer_background_jobs) log->StartBackgroundJobs();
  return log;
}

void WritePath::StartBackgroundJobs() {
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
}

WritePath::WritePath(const storage::AuditStore* store,
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

WritePath::~WritePath() {
  stop_summaries_.Notify();
  if (summarizer_.joinable()) summarizer_.join();
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (writer_.joinable()) writer_.join();
  if (completer_.joinable()) completer_.join();
}

void WritePath::WriteRefusalSummaries() const {
  std::vector<AuditEvent> summaries = refusals_.Take(options_.now());
  std::vector<AuditEvent> unwritten;
  for (AuditEvent& e : summaries) {
    if (!Append(e).ok()) unwritten.push_back(std::move(e));
  }
  if (!unwritten.empty()) refusals_.PutBack(std::move(unwritten));
}

absl::Status WritePath::Append(AuditEvent event, Mutation mutation,
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

void WritePath::AppendAll(std::vector<Entry>& entries) const {
  if (entries.empty()) return;
  absl::Notification written;
  AppendAllAsync(std::move(entries), [&](std::vector<Entry>& done) {
    entries = std::move(done);
    written.Notify();
  });
  written.WaitForNotification();
}

void WritePath::AppendAllAsync(std::vector<Entry> entries,
                               AppendDone done) const {
  AppendAsync(std::nullopt, std::move(entries), std::move(done));
}

void WritePath::AppendAsync(std::optional<AuditEvent> batch_call,
                            std::vector<Entry> entries, AppendDone done) const {
  if (entries.empty()) {
    std::move(done)(entries);
    return;
  }
  // The second line of recorded_value.h, on the caller's thread.
  if (!options_.node.empty()) {
    if (batch_call.has_value()) batch_call->set_node(options_.node);
    for (Entry& e : entries) e.event.set_node(options_.node);
  }
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

void WritePath::Enqueue(std::unique_ptr<Pending> pending) const {
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

void WritePath::WriterLoop() {
  pthread_setname_np(pthread_self(), "audit-writer");  // for ps and perf
  while (true) {
    std::vector<std::unique_ptr<Pending>> batch;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](WritePath* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
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

void WritePath::CompletionLoop() {
  pthread_setname_np(pthread_self(), "audit-done");
  while (true) {
    std::deque<std::vector<std::unique_ptr<Pending>>> groups;
    {
      absl::MutexLock lock(&written_mu_);
      written_mu_.Await(absl::Condition(
          +[](WritePath* self)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->written_mu_) {
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
class WritePath::GroupChainer : public storage::GroupDescriber {
 public:
  GroupChainer(const WritePath& log,
               const std::vector<std::unique_ptr<Pending>>& batch)
      : log_(log), batch_(batch), chain_(log.key_.get(), log.key_version_) {
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
    chain_.StartAfter(head.sequence, head.mac,
                      log_.options_.resume_after_sequence);
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
    append_.head_mac = chain_.head_mac();
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
    std::optional<std::pair<uint64_t, std::string>> record =
        chain_.Chain(event);
    if (!record.has_value()) return false;
    append_.records.push_back(*std::move(record));
    return true;
  }

  // The entries written (for failing them closed).
  const std::vector<Entry*>& included() const { return included_; }
  uint64_t head_sequence() const { return chain_.head_sequence(); }
  const std::string& head_mac() const { return chain_.head_mac(); }

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

  const WritePath& log_;
  const std::vector<std::unique_ptr<Pending>>& batch_;
  std::vector<std::pair<size_t, size_t>> position_;
  std::vector<storage::Transaction> group_;
  audit::ChainBuilder chain_;
  storage::ChainAppend append_;
  std::vector<Entry*> included_;
  absl::flat_hash_map<const Pending*, size_t> batch_bytes_;
  // (call, entry) of every item moved into a batch event, in order.
  std::vector<std::pair<Pending*, Entry*>> taken_;
};

void WritePath::WriteBatch(const std::vector<std::unique_ptr<Pending>>& batch) {
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

absl::Status WritePath::Scan(
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

absl::StatusOr<uint64_t> WritePath::Purge(
    absl::Time now, const std::optional<storage::Condition>& fence) const {
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
        absl::StatusOr<std::pair<int64_t, std::string>> time_and_mac =
            audit::RecordTimeAndMac(record);
        if (!time_and_mac.ok()) return false;  // Verify reports it
        if (time_and_mac->first >= cutoff_ms) return false;
        through = sequence;
        through_ms = time_and_mac->first;
        through_mac = std::move(time_and_mac->second);
        return true;
      });
  if (!scan.ok()) return scan;
  if (through == 0) return 0;
  std::string anchor =
      audit::MakeAnchor(*key_, key_version_, through, through_ms, through_mac);
  const uint64_t first_kept = through + 1;
  // The purge, its anchor and its record are one write.
  auto pending = std::make_unique<Pending>();
  pending->entries.resize(1);
  pending->entries[0].event = ServerEvent(::cardvault::v1::AUDIT_PURGE, now);
  pending->entries[0].event.set_node(options_.node);
  SafeEvent(&pending->entries[0].event);
  pending->entries[0].event.set_detail(
      absl::StrCat("purged audit records 1..", through,
                   " (older than the retention period); chain anchored, "
                   "first kept ",
                   first_kept));
  if (fence.has_value())
    pending->entries[0].mutation.conditions.push_back(*fence);
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

absl::StatusOr<ChainReport> WritePath::Verify(
    const std::optional<Checkpoint>& checkpoint) const {
  absl::MutexLock purge_lock(&purge_mu_);
  return VerifyStoredChain(*store_, *key_, key_version_, options_.retention,
                           absl::Now(), checkpoint);
}

}  // namespace cardvault::commit
