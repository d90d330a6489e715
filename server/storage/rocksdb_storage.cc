#include "server/storage/rocksdb_storage.h"

#include <filesystem>
#include <system_error>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"
#include "server/storage/rocksdb_status.h"

namespace cardvault::storage {
namespace {

constexpr char kTokensCf[] = "tokens";
constexpr char kKeysCf[] = "keys";

rocksdb::Slice ToSlice(absl::string_view s) {
  return rocksdb::Slice(s.data(), s.size());
}

rocksdb::WriteOptions DurableWrite() {
  rocksdb::WriteOptions w;
  w.sync = true;  // Tokenize answers only after the WAL is on disk.
  return w;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RocksDbStorage>> RocksDbStorage::Open(
    const Options& options) {
  if (options.data_dir.empty()) {
    return absl::InvalidArgumentError("storage data_dir is empty");
  }
  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat(
        "cannot create data dir ", options.data_dir, ": ", ec.message()));
  }
  std::filesystem::permissions(options.data_dir,
                               std::filesystem::perms::owner_all, ec);

  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.paranoid_checks = true;
  db_options.keep_log_file_num = 5;

  // Point lookups by token: bloom filters skip SST files without the key.
  rocksdb::BlockBasedTableOptions table;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  table.block_cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  rocksdb::ColumnFamilyOptions cf_options;
  cf_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));

  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {kTokensCf, cf_options},
      {kKeysCf, rocksdb::ColumnFamilyOptions()},
  };
  std::vector<rocksdb::ColumnFamilyHandle*> raw_handles;
  rocksdb::DB* raw_db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.data_dir,
                                        descriptors, &raw_handles, &raw_db);
  if (!s.ok()) return FromRocksDb(s, "open");
  std::unique_ptr<rocksdb::DB> db(raw_db);
  std::vector<CfHandle> handles;
  for (rocksdb::ColumnFamilyHandle* h : raw_handles) handles.emplace_back(h);
  return std::unique_ptr<RocksDbStorage>(
      new RocksDbStorage(std::move(db), std::move(handles)));
}

RocksDbStorage::RocksDbStorage(std::unique_ptr<rocksdb::DB> db,
                               std::vector<CfHandle> handles)
    : db_(std::move(db)),
      handles_(std::move(handles)),
      tokens_(handles_[1].get()),
      keys_(handles_[2].get()) {}

absl::Status RocksDbStorage::InsertIfAbsent(rocksdb::ColumnFamilyHandle* cf,
                                            absl::string_view key,
                                            absl::string_view value) const {
  absl::MutexLock lock(&stripes_[absl::HashOf(key) % kLockStripes]);
  std::string existing;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), cf, ToSlice(key), &existing);
  if (s.ok()) return absl::AlreadyExistsError("key already present");
  if (!s.IsNotFound()) return FromRocksDb(s, "get");
  return FromRocksDb(db_->Put(DurableWrite(), cf, ToSlice(key), ToSlice(value)),
                     "put");
}

absl::Status RocksDbStorage::Insert(absl::string_view token,
                                    absl::string_view record) const {
  return InsertIfAbsent(tokens_, token, record);
}

absl::StatusOr<std::string> RocksDbStorage::Lookup(
    absl::string_view token) const {
  std::string value;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), tokens_, ToSlice(token), &value);
  if (s.IsNotFound()) return absl::NotFoundError("no such token");
  if (!s.ok()) return FromRocksDb(s, "get");
  return value;
}

absl::Status RocksDbStorage::InsertKey(absl::string_view key_id,
                                       absl::string_view record) const {
  return InsertIfAbsent(keys_, key_id, record);
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

absl::Status RocksDbStorage::Flush() const {
  rocksdb::FlushOptions f;
  f.wait = true;
  std::vector<rocksdb::ColumnFamilyHandle*> cfs;
  for (const CfHandle& h : handles_) cfs.push_back(h.get());
  return FromRocksDb(db_->Flush(f, cfs), "flush");
}

}  // namespace cardvault::storage
