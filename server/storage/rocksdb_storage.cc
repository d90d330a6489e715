#include "server/storage/rocksdb_storage.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <system_error>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "rocksdb/compaction_filter.h"
#include "rocksdb/convenience.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/merge_operator.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"
#include "server/storage/rocksdb_status.h"

namespace cardvault::storage {
namespace {

// Token-data column families, in Table order.
constexpr const char* kTableCfs[kNumTables] = {"tokens", "pan_index",
                                               "idempotency", "shared"};
constexpr char kKeysCf[] = "keys";
constexpr char kKeyUsageCf[] = "key_usage";
constexpr char kAuditCf[] = "audit";
constexpr char kAuditHeadKey[] = "audit_head";
constexpr size_t kAuditHeadBytes = 8 + 32;

std::string SequenceKey(uint64_t sequence) {
  std::string key(8, '\0');
  for (int i = 7; i >= 0; --i, sequence >>= 8) {
    key[i] = static_cast<char>(sequence & 0xFF);
  }
  return key;
}

uint64_t SequenceOf(absl::string_view key) {
  uint64_t sequence = 0;
  for (size_t i = 0; i < key.size() && i < 8; ++i) {
    sequence = (sequence << 8) | static_cast<uint8_t>(key[i]);
  }
  return sequence;
}

rocksdb::Slice ToSlice(absl::string_view s) {
  return rocksdb::Slice(s.data(), s.size());
}

absl::string_view FromSlice(const rocksdb::Slice& s) {
  return absl::string_view(s.data(), s.size());
}

rocksdb::WriteOptions DurableWrite() {
  rocksdb::WriteOptions w;
  w.sync = true;  // Tokenize answers only after the WAL is on disk.
  return w;
}

}  // namespace

// Drops values whose expiry time has passed. One instance per table, shared
// by RocksDB's compaction threads: stateless apart from its const options.
class RocksDbStorage::ExpiryFilter : public rocksdb::CompactionFilter {
 public:
  ExpiryFilter(Table table, const Options& options)
      : table_(table), expiry_of_(options.expiry_of), now_(options.now) {}

  bool Filter(int /*level*/, const rocksdb::Slice& key,
              const rocksdb::Slice& existing_value, std::string* /*new_value*/,
              bool* /*value_changed*/) const override {
    const absl::Time expires = expiry_of_(
        table_, absl::string_view(key.data(), key.size()),
        absl::string_view(existing_value.data(), existing_value.size()));
    return expires <= now_();
  }

  const char* Name() const override { return "cardvault.ExpiryFilter"; }

 private:
  const Table table_;
  const std::function<absl::Time(Table, absl::string_view, absl::string_view)>
      expiry_of_;
  const std::function<absl::Time()> now_;
};

absl::StatusOr<std::unique_ptr<RocksDbStorage>> RocksDbStorage::Open(
    const Options& options) {
  if (options.data_dir.empty()) {
    return absl::InvalidArgumentError("storage data_dir is empty");
  }
  std::error_code ec;
  if (!options.read_only) {
    std::filesystem::create_directories(options.data_dir, ec);
    if (ec) {
      return absl::UnavailableError(absl::StrCat(
          "cannot create data dir ", options.data_dir, ": ", ec.message()));
    }
    std::filesystem::permissions(options.data_dir,
                                 std::filesystem::perms::owner_all, ec);
  }

  rocksdb::DBOptions db_options;
  if (options.env != nullptr) db_options.env = options.env;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.paranoid_checks = true;
  db_options.keep_log_file_num = 5;
  // Memtables of all column families together stay under 64 MiB (resident
  // size), and the WAL under 64 MiB: column families holding the oldest WAL
  // data are flushed first, so a start after kill -9 replays little.
  db_options.db_write_buffer_size = 64 << 20;
  db_options.max_total_wal_size = 64 << 20;

  // Point lookups by token: bloom filters skip SST files without the key.
  rocksdb::BlockBasedTableOptions table;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  table.block_cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  // Filters and indexes live in the block cache too, so resident size stays
  // bounded however many tokens are stored (outside it, they grow by about
  // 2 MiB per million tokens). They are partitioned into 4 KiB blocks, so a
  // lookup loads only the partition it needs (whole filters of large files,
  // evicted and read again, made a 10 M-token load 5 times slower); the
  // partitions' top-level index and level-0 files stay pinned.
  table.cache_index_and_filter_blocks = true;
  table.index_type = rocksdb::BlockBasedTableOptions::kTwoLevelIndexSearch;
  table.partition_filters = true;
  table.metadata_block_size = 4096;
  table.pin_top_level_index_and_filter = true;
  table.pin_l0_filter_and_index_blocks_in_cache = true;
  rocksdb::ColumnFamilyOptions cf_options;
  cf_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  // Token data is ciphertext, random tokens and keyed hashes: compressing
  // it only costs CPU in every flush and compaction.
  cf_options.compression = rocksdb::kNoCompression;
  // Every new token is looked up to be absent (as the write's condition,
  // and numeric ones when drawn too): a whole-key bloom filter in the memtable
  // answers that without a skip-list search (cache misses on every level;
  // the top user-space cost of Tokenize before). 2 % of the memtable.
  cf_options.memtable_whole_key_filtering = true;
  cf_options.memtable_prefix_bloom_size_ratio = 0.02;

  std::vector<std::unique_ptr<ExpiryFilter>> filters;
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()}};
  for (int t = 0; t < kNumTables; ++t) {
    rocksdb::ColumnFamilyOptions table_options = cf_options;
    if (options.expiry_of) {
      filters.push_back(
          std::make_unique<ExpiryFilter>(static_cast<Table>(t), options));
      table_options.compaction_filter = filters.back().get();
      // Every file passes the filter at least once a period, and files with
      // deletions cascade down a level a period, where tombstones meet the
      // values they delete (both need max_open_files = -1, the default).
      const auto period = static_cast<uint64_t>(
          absl::ToInt64Seconds(options.periodic_compaction));
      table_options.periodic_compaction_seconds = period;
      table_options.ttl = period;
    }
    descriptors.emplace_back(kTableCfs[t], table_options);
  }
  descriptors.emplace_back(kKeysCf, rocksdb::ColumnFamilyOptions());
  // Use counts are summed by RocksDB, so concurrent writes never lose one.
  rocksdb::ColumnFamilyOptions usage_options;
  rocksdb::ConfigOptions config;
  rocksdb::Status merge = rocksdb::MergeOperator::CreateFromString(
      config, "uint64add", &usage_options.merge_operator);
  if (!merge.ok()) return FromRocksDb(merge, "uint64add merge operator");
  descriptors.emplace_back(kKeyUsageCf, usage_options);
  // Audit records repeat identities, certificate fingerprints and RPC
  // names: LZ4 as they are written, ZSTD once they settle in the last level.
  rocksdb::ColumnFamilyOptions audit_options;
  audit_options.compression = rocksdb::kLZ4Compression;
  audit_options.bottommost_compression = rocksdb::kZSTD;
  descriptors.emplace_back(kAuditCf, audit_options);
  std::vector<rocksdb::ColumnFamilyHandle*> raw_handles;
  rocksdb::DB* raw_db = nullptr;
  rocksdb::Status s =
      options.read_only
          ? rocksdb::DB::OpenForReadOnly(db_options, options.data_dir,
                                         descriptors, &raw_handles, &raw_db)
          : rocksdb::DB::Open(db_options, options.data_dir, descriptors,
                              &raw_handles, &raw_db);
  if (!s.ok()) return FromRocksDb(s, "open");
  std::unique_ptr<rocksdb::DB> db(raw_db);
  std::vector<CfHandle> handles;
  for (rocksdb::ColumnFamilyHandle* h : raw_handles) handles.emplace_back(h);
  return std::unique_ptr<RocksDbStorage>(
      new RocksDbStorage(std::move(filters), std::move(db), std::move(handles),
                         options.read_only));
}

absl::Status RocksDbStorage::CheckNotInUse(const std::string& data_dir) {
  const std::string lock_path = data_dir + "/LOCK";
  const int fd = open(lock_path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return absl::OkStatus();  // no database there yet
  // RocksDB holds an fcntl write lock on LOCK while the database is open.
  struct flock lock = {};
  lock.l_type = F_WRLCK;
  lock.l_whence = SEEK_SET;
  const bool free = fcntl(fd, F_SETLK, &lock) == 0;
  if (free) {
    lock.l_type = F_UNLCK;
    (void)fcntl(fd, F_SETLK, &lock);
  }
  close(fd);
  if (!free) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the database in ", data_dir, " is open in a running cardvaultd"));
  }
  return absl::OkStatus();
}

RocksDbStorage::RocksDbStorage(
    std::vector<std::unique_ptr<ExpiryFilter>> filters,
    std::unique_ptr<rocksdb::DB> db, std::vector<CfHandle> handles,
    bool read_only)
    : filters_(std::move(filters)),
      db_(std::move(db)),
      handles_(std::move(handles)),
      tables_{handles_[1].get(), handles_[2].get(), handles_[3].get(),
              handles_[4].get()},
      keys_(handles_[1 + kNumTables].get()),
      key_usage_(handles_[2 + kNumTables].get()),
      audit_(handles_[3 + kNumTables].get()),
      read_only_(read_only) {}

RocksDbStorage::~RocksDbStorage() {
  if (read_only_) return;
  // A clean stop leaves nothing in the WAL to replay at the next start.
  std::vector<rocksdb::ColumnFamilyHandle*> all;
  for (const CfHandle& h : handles_) all.push_back(h.get());
  (void)db_->Flush(rocksdb::FlushOptions(), all);
}

rocksdb::ColumnFamilyHandle* RocksDbStorage::HandleOf(Table table) const {
  return tables_[static_cast<size_t>(table)];
}

absl::StatusOr<std::string> RocksDbStorage::Get(Table table,
                                                absl::string_view key) const {
  std::string value;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), HandleOf(table), ToSlice(key), &value);
  if (s.IsNotFound()) return absl::NotFoundError("no such key");
  if (!s.ok()) return FromRocksDb(s, "get");
  return value;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
RocksDbStorage::Scan(Table table, absl::string_view start_after,
                     size_t limit) const {
  std::vector<std::pair<std::string, std::string>> out;
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), HandleOf(table)));
  it->Seek(ToSlice(start_after));
  if (it->Valid() && !start_after.empty() &&
      it->key() == ToSlice(start_after)) {
    it->Next();
  }
  for (; it->Valid() && out.size() < limit; it->Next()) {
    out.emplace_back(it->key().ToString(), it->value().ToString());
  }
  if (!it->status().ok()) return FromRocksDb(it->status(), "scan");
  return out;
}

absl::StatusOr<ChainHead> RocksDbStorage::ChainHeadNow() const {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), handles_[0].get(),
                               kAuditHeadKey, &value);
  if (s.IsNotFound()) return ChainHead{};
  if (!s.ok()) return FromRocksDb(s, "get audit head");
  if (value.size() != kAuditHeadBytes) {
    return absl::DataLossError("stored audit head has a bad length");
  }
  return ChainHead{.sequence = SequenceOf(value.substr(0, 8)),
                   .mac = value.substr(8)};
}

absl::Status RocksDbStorage::CommitGroup(absl::Span<const Transaction> group,
                                         GroupDescriber& describer) const {
  absl::MutexLock lock(&commit_mu_);
  absl::StatusOr<ChainHead> head = ChainHeadNow();
  if (!head.ok()) return head.status();
  ConditionEvaluator evaluator(
      [&](Table table,
          absl::string_view key) -> absl::StatusOr<std::optional<std::string>> {
        absl::StatusOr<std::string> v = Get(table, key);
        if (absl::IsNotFound(v.status())) return std::nullopt;
        if (!v.ok()) return v.status();
        return *std::move(v);
      });
  absl::StatusOr<ChainAppend> described =
      evaluator.Describe(group, *head, describer);
  if (!described.ok()) return described.status();
  ChainAppend& append = *described;
  const bool audited = !append.records.empty();
  if (!audited && evaluator.final_writes().empty()) return absl::OkStatus();
  if (audited && append.head_mac.size() != kAuditHeadBytes - 8) {
    return absl::InternalError("audit head MAC has a bad length");
  }
  rocksdb::WriteBatch batch;
  // In key order, so that each memtable insert starts its skip-list search
  // where the previous one ended.
  std::vector<const std::pair<std::pair<Table, std::string>,
                              std::optional<std::string>>*>
      order;
  order.reserve(evaluator.final_writes().size());
  for (const auto& w : evaluator.final_writes()) order.push_back(&w);
  std::sort(order.begin(), order.end(),
            [](const auto* a, const auto* b) { return a->first < b->first; });
  for (const auto* w : order) {
    const auto& [table, key] = w->first;
    if (w->second.has_value()) {
      batch.Put(HandleOf(table), ToSlice(key), ToSlice(*w->second));
    } else {
      batch.Delete(HandleOf(table), ToSlice(key));
    }
  }
  for (const auto& [key_id, uses] : evaluator.CounterAdds()) {
    std::string delta(8, '\0');
    for (int i = 0; i < 8; ++i) delta[i] = static_cast<char>(uses >> (8 * i));
    batch.Merge(key_usage_, ToSlice(key_id), delta);
  }
  for (const auto& [sequence, record] : append.records) {
    batch.Put(audit_, SequenceKey(sequence), ToSlice(record));
  }
  if (append.purge_through > 0) {
    batch.DeleteRange(audit_, SequenceKey(1),
                      SequenceKey(append.purge_through + 1));
  }
  if (append.anchor.has_value()) {
    batch.Put(audit_, SequenceKey(0), ToSlice(*append.anchor));
  }
  if (audited) {
    std::string new_head = SequenceKey(append.records.back().first);
    new_head += append.head_mac;
    batch.Put(handles_[0].get(), kAuditHeadKey, new_head);
  }
  return FromRocksDb(db_->Write(DurableWrite(), &batch), "commit");
}

absl::StatusOr<std::optional<std::string>> RocksDbStorage::AuditAnchor() const {
  std::string value;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), audit_, SequenceKey(0), &value);
  if (s.IsNotFound()) return std::nullopt;
  if (!s.ok()) return FromRocksDb(s, "get audit anchor");
  return value;
}

absl::StatusOr<std::optional<std::pair<uint64_t, std::string>>>
RocksDbStorage::LastAuditRecord() const {
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), audit_));
  it->SeekToLast();
  if (!it->status().ok()) return FromRocksDb(it->status(), "scan audit");
  if (!it->Valid() || SequenceOf(FromSlice(it->key())) == 0) {
    return std::nullopt;
  }
  return std::make_pair(SequenceOf(FromSlice(it->key())),
                        it->value().ToString());
}

absl::Status RocksDbStorage::ScanAudit(
    uint64_t from,
    const std::function<bool(uint64_t, absl::string_view)>& visit) const {
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), audit_));
  // Sequence 0 is the anchor, not a record.
  for (it->Seek(SequenceKey(std::max<uint64_t>(from, 1))); it->Valid();
       it->Next()) {
    if (!visit(SequenceOf(FromSlice(it->key())),
               absl::string_view(it->value().data(), it->value().size()))) {
      break;
    }
  }
  return FromRocksDb(it->status(), "scan audit");
}

absl::StatusOr<std::string> RocksDbStorage::GetKey(
    absl::string_view key_id) const {
  std::string value;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), keys_, ToSlice(key_id), &value);
  if (s.IsNotFound()) return absl::NotFoundError("no such key record");
  if (!s.ok()) return FromRocksDb(s, "get key");
  return value;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
RocksDbStorage::ListKeys() const {
  std::vector<std::pair<std::string, std::string>> out;
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), keys_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    out.emplace_back(it->key().ToString(), it->value().ToString());
  }
  if (!it->status().ok()) return FromRocksDb(it->status(), "scan keys");
  return out;
}

absl::Status RocksDbStorage::UpdateKeys(
    const std::vector<KeyUpdate>& updates) const {
  absl::MutexLock lock(&keys_mu_);
  rocksdb::WriteBatch batch;
  for (const KeyUpdate& u : updates) {
    std::string current;
    rocksdb::Status s =
        db_->Get(rocksdb::ReadOptions(), keys_, ToSlice(u.key_id), &current);
    if (!s.ok() && !s.IsNotFound()) return FromRocksDb(s, "get key");
    const bool holds = u.expected.has_value() ? s.ok() && current == *u.expected
                                              : s.IsNotFound();
    if (!holds) {
      return absl::FailedPreconditionError(
          absl::StrCat("key record ", u.key_id, " changed"));
    }
    if (u.record.has_value()) {
      if (rocksdb::Status p =
              batch.Put(keys_, ToSlice(u.key_id), ToSlice(*u.record));
          !p.ok()) {
        return FromRocksDb(p, "batch");
      }
    }
  }
  return FromRocksDb(db_->Write(DurableWrite(), &batch), "write keys");
}

absl::StatusOr<std::map<std::string, uint64_t>>
RocksDbStorage::CountersWithPrefix(absl::string_view prefix) const {
  std::map<std::string, uint64_t> out;
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), key_usage_));
  for (it->Seek(ToSlice(prefix));
       it->Valid() && it->key().starts_with(ToSlice(prefix)); it->Next()) {
    uint64_t uses = 0;
    const rocksdb::Slice v = it->value();
    for (size_t i = 0; i < v.size() && i < 8; ++i) {
      uses |= uint64_t{static_cast<uint8_t>(v[i])} << (8 * i);
    }
    out.emplace(it->key().ToString(), uses);
  }
  if (!it->status().ok()) return FromRocksDb(it->status(), "scan key uses");
  return out;
}

absl::Status RocksDbStorage::Flush() const {
  rocksdb::FlushOptions f;
  f.wait = true;
  std::vector<rocksdb::ColumnFamilyHandle*> cfs;
  for (const CfHandle& h : handles_) cfs.push_back(h.get());
  return FromRocksDb(db_->Flush(f, cfs), "flush");
}

absl::Status RocksDbStorage::CompactTokenData() const {
  if (absl::Status s = Flush(); !s.ok()) return s;
  rocksdb::CompactRangeOptions c;
  // Rewrite the last level too, so the filter sees every value and
  // tombstones meet the values they delete.
  c.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  for (rocksdb::ColumnFamilyHandle* cf : tables_) {
    rocksdb::Status s = db_->CompactRange(c, cf, nullptr, nullptr);
    if (!s.ok()) return FromRocksDb(s, "compact");
  }
  return absl::OkStatus();
}

}  // namespace cardvault::storage
