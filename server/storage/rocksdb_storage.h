// RocksDB implementation of RecordStore, KeyStore and AuditStore.
//
// Column families:
//   "tokens"       token -> sealed card record (see vault/card_record.h)
//   "pan_index"    keyed HMAC -> index entry (see vault/index_entry.h)
//   "idempotency"  keyed HMAC -> first result (see vault/index_entry.h)
//   "keys"         key id -> wrapped key record (see vault/wrapped_keys.h)
//   "key_usage"    key id -> encryptions so far, uint64 little-endian,
//                  summed by RocksDB's uint64add merge operator
//   "audit"        8-byte big-endian sequence -> audit record
//                  (audit/audit_chain.h); sequence 0: the retention anchor
//   default        "audit_head" -> the chain head: sequence (8 bytes,
//                  big-endian) || chain MAC (32 bytes), written with every
//                  group of records
// Every write is synced (WAL fsync) before it returns. A group commit checks
// its conditions and writes under one lock held by the store (RocksDB admits
// one process per directory), so no two commits can both pass a condition.
//
// Expired values of the first three are dropped by a compaction filter;
// periodic compaction makes every file pass through it at least once a day,
// and TTL compaction moves files with deletions down a level a day, so
// expired and deleted card records leave the disk within days without an
// operator (CompactTokenData does it at once).
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_STORAGE_ROCKSDB_STORAGE_H_
#define CARDVAULT_SERVER_STORAGE_ROCKSDB_STORAGE_H_

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "rocksdb/db.h"
#include "server/storage/token_store.h"
#include "server/storage/transaction.h"

namespace cardvault::storage {

class RocksDbStorage : public Store {
 public:
  struct Options {
    // Directory of the database; created if missing.
    std::string data_dir;
    // Block cache for SST data, index and filter blocks, in bytes. Default
    // 64 MiB.
    size_t block_cache_bytes = 64 << 20;
    // When a value of a token-data table expires (InfiniteFuture = never).
    // Unset: nothing expires. Called from compaction threads.
    std::function<absl::Time(Table, absl::string_view key,
                             absl::string_view value)>
        expiry_of = nullptr;
    // Clock the compaction filter compares expiry times with.
    std::function<absl::Time()> now = [] { return absl::Now(); };
    // Every token-data file is recompacted (and so filtered) at least this
    // often. Default one day.
    absl::Duration periodic_compaction = absl::Hours(24);
    // Opens without writing anything (no lock, no recovery written back):
    // a backup opened in place, or a stopped vault's directory read by a
    // restore. Writes then fail. Default false.
    bool read_only = false;
    // Environment to open through (a backup's, which maps its shared
    // files); null = the default one.
    rocksdb::Env* env = nullptr;
  };

  static absl::StatusOr<std::unique_ptr<RocksDbStorage>> Open(
      const Options& options);

  RocksDbStorage(const RocksDbStorage&) = delete;
  RocksDbStorage& operator=(const RocksDbStorage&) = delete;
  ~RocksDbStorage() override;

  absl::StatusOr<std::string> Get(Table table,
                                  absl::string_view key) const override;
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Scan(
      Table table, absl::string_view start_after, size_t limit) const override;

  absl::StatusOr<std::string> GetKey(absl::string_view key_id) const override;
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ListKeys()
      const override;
  absl::Status UpdateKeys(const std::vector<KeyUpdate>& updates) const override;
  absl::StatusOr<std::map<std::string, uint64_t>> CountersWithPrefix(
      absl::string_view prefix) const override;

  absl::Status CommitGroup(absl::Span<const Transaction> group,
                           GroupDescriber& describer) const override;
  absl::StatusOr<ChainHead> ChainHeadNow() const override;
  absl::StatusOr<std::optional<std::pair<uint64_t, std::string>>>
  LastAuditRecord() const override;
  absl::StatusOr<std::optional<std::string>> AuditAnchor() const override;
  absl::Status ScanAudit(uint64_t from,
                         const std::function<bool(uint64_t, absl::string_view)>&
                             visit) const override;

  // OK if no process holds the database in `data_dir` open for writing
  // (or there is none); FAILED_PRECONDITION if one does.
  static absl::Status CheckNotInUse(const std::string& data_dir);

  // Flushes memtables to SST files (used by tests that inspect files).
  absl::Status Flush() const;

  // Flushes and compacts the token-data tables down to the last level, so
  // that deleted and expired values are physically gone from live files.
  absl::Status CompactTokenData() const;

 private:
  friend class RocksDbBackupStore;
  using CfHandle = std::unique_ptr<rocksdb::ColumnFamilyHandle>;
  class ExpiryFilter;
  RocksDbStorage(std::vector<std::unique_ptr<ExpiryFilter>> filters,
                 std::unique_ptr<rocksdb::DB> db, std::vector<CfHandle> handles,
                 bool read_only);
  rocksdb::ColumnFamilyHandle* HandleOf(Table table) const;

  // Outlive the database, which calls them from compaction threads.
  std::vector<std::unique_ptr<ExpiryFilter>> filters_;
  // Declared before the handles so that the handles are released first.
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<CfHandle> handles_;
  std::array<rocksdb::ColumnFamilyHandle*, kNumTables> tables_;
  rocksdb::ColumnFamilyHandle* keys_;
  rocksdb::ColumnFamilyHandle* key_usage_;
  rocksdb::ColumnFamilyHandle* audit_;
  const bool read_only_;
  // Key updates are reads then a write, and rare: one lock makes each
  // atomic against every other.
  mutable absl::Mutex keys_mu_;
  // Held across a group commit's condition checks and its write.
  mutable absl::Mutex commit_mu_;
};

}  // namespace cardvault::storage

#endif  // CARDVAULT_SERVER_STORAGE_ROCKSDB_STORAGE_H_
