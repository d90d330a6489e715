#include "server/storage/rocksdb_backup.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "rocksdb/utilities/checkpoint.h"
#include "server/storage/rocksdb_status.h"

namespace cardvault::storage {
namespace {

class StorageView : public StoreView {
 public:
  StorageView(std::shared_ptr<rocksdb::Env> env,
              std::unique_ptr<RocksDbStorage> storage)
      : env_(std::move(env)), storage_(std::move(storage)) {}
  const RecordStore& records() const override { return *storage_; }
  const KeyStore& keys() const override { return *storage_; }
  const AuditStore& audit() const override { return *storage_; }

 private:
  // The backup's environment maps its shared files; it outlives the DB.
  std::shared_ptr<rocksdb::Env> env_;
  std::unique_ptr<RocksDbStorage> storage_;
};

// A view of a store this code owns for the length of a call.
class BorrowedView : public StoreView {
 public:
  explicit BorrowedView(const RocksDbStorage* storage) : storage_(storage) {}
  const RecordStore& records() const override { return *storage_; }
  const KeyStore& keys() const override { return *storage_; }
  const AuditStore& audit() const override { return *storage_; }

 private:
  const RocksDbStorage* storage_;
};

void RemoveTree(const std::string& dir) {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

}  // namespace

absl::StatusOr<std::unique_ptr<StoreView>> OpenReadOnlyView(
    const std::string& data_dir) {
  absl::StatusOr<std::unique_ptr<RocksDbStorage>> storage =
      RocksDbStorage::Open({.data_dir = data_dir, .read_only = true});
  if (!storage.ok()) return storage.status();
  return std::unique_ptr<StoreView>(
      new StorageView(nullptr, *std::move(storage)));
}

absl::StatusOr<std::unique_ptr<RocksDbBackupStore>> RocksDbBackupStore::Open(
    const RocksDbStorage* live, Options options) {
  if (options.directory.empty()) {
    return absl::InvalidArgumentError("backup directory is empty");
  }
  if (options.read_only && live != nullptr) {
    return absl::InvalidArgumentError(
        "a read-only backup store cannot back up");
  }
  rocksdb::BackupEngineOptions engine_options(options.directory);
  engine_options.sync = true;
  engine_options.share_table_files = true;
  engine_options.share_files_with_checksum = true;
  engine_options.backup_rate_limit = options.rate_limit_bytes_per_second;
  engine_options.restore_rate_limit = options.rate_limit_bytes_per_second;
  engine_options.max_background_operations = 2;
  std::unique_ptr<rocksdb::BackupEngine> engine;
  std::unique_ptr<rocksdb::BackupEngineReadOnly> reader;
  int lock_fd = -1;
  if (options.read_only) {
    if (!std::filesystem::is_directory(options.directory)) {
      return absl::NotFoundError(
          absl::StrCat("no backup directory ", options.directory));
    }
    rocksdb::BackupEngineReadOnly* raw = nullptr;
    rocksdb::IOStatus s = rocksdb::BackupEngineReadOnly::Open(
        rocksdb::Env::Default(), engine_options, &raw);
    if (!s.ok()) return FromRocksDb(s, "open backup directory");
    reader.reset(raw);
  } else {
    std::error_code ec;
    std::filesystem::create_directories(options.directory, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("cannot create backup directory ", options.directory,
                       ": ", ec.message()));
    }
    std::filesystem::permissions(options.directory,
                                 std::filesystem::perms::owner_all, ec);
    const std::string lock_path = options.directory + "/cardvault.lock";
    lock_fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd < 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot open ", lock_path, ": ", std::strerror(errno)));
    }
    if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
      close(lock_fd);
      return absl::FailedPreconditionError(absl::StrCat(
          "backup directory ", options.directory,
          " is in use by another cardvaultd (one writer per directory)"));
    }
    rocksdb::BackupEngine* raw = nullptr;
    rocksdb::IOStatus s = rocksdb::BackupEngine::Open(rocksdb::Env::Default(),
                                                      engine_options, &raw);
    if (!s.ok()) {
      close(lock_fd);
      return FromRocksDb(s, "open backup directory");
    }
    engine.reset(raw);
  }
  return std::unique_ptr<RocksDbBackupStore>(new RocksDbBackupStore(
      live, std::move(options), std::move(engine), std::move(reader), lock_fd));
}

RocksDbBackupStore::~RocksDbBackupStore() {
  if (lock_fd_ >= 0) close(lock_fd_);
}

RocksDbBackupStore::RocksDbBackupStore(
    const RocksDbStorage* live, Options options,
    std::unique_ptr<rocksdb::BackupEngine> engine,
    std::unique_ptr<rocksdb::BackupEngineReadOnly> reader, int lock_fd)
    : live_(live),
      lock_fd_(lock_fd),
      options_(std::move(options)),
      engine_(std::move(engine)),
      reader_(std::move(reader)) {}

const rocksdb::BackupEngineReadOnlyBase& RocksDbBackupStore::Reader() const {
  if (engine_ != nullptr) return *engine_;
  return *reader_;
}

absl::StatusOr<StoredBackup> RocksDbBackupStore::Create(
    const Describe& describe) {
  absl::MutexLock lock(&mu_);
  if (live_ == nullptr || engine_ == nullptr) {
    return absl::FailedPreconditionError("this backup store cannot back up");
  }
  if (options_.staging_dir.empty()) {
    return absl::InvalidArgumentError("backup staging directory is empty");
  }
  RemoveTree(options_.staging_dir);  // a crashed backup's copy
  rocksdb::Checkpoint* raw_checkpoint = nullptr;
  if (rocksdb::Status s =
          rocksdb::Checkpoint::Create(live_->db_.get(), &raw_checkpoint);
      !s.ok()) {
    return FromRocksDb(s, "checkpoint");
  }
  std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw_checkpoint);
  if (rocksdb::Status s = checkpoint->CreateCheckpoint(options_.staging_dir);
      !s.ok()) {
    RemoveTree(options_.staging_dir);
    return FromRocksDb(s, "checkpoint");
  }
  rocksdb::BackupID id = 0;
  absl::Status kept = [&]() -> absl::Status {
    absl::StatusOr<std::unique_ptr<RocksDbStorage>> copy =
        RocksDbStorage::Open({.data_dir = options_.staging_dir});
    if (!copy.ok()) return copy.status();
    absl::StatusOr<std::string> metadata = describe(BorrowedView(copy->get()));
    if (!metadata.ok()) return metadata.status();
    rocksdb::CreateBackupOptions create;
    // Nothing writes to the copy: flushed, it is exactly what was described.
    create.flush_before_backup = true;
    return FromRocksDb(engine_->CreateNewBackupWithMetadata(
                           create, (*copy)->db_.get(), *metadata, &id),
                       "backup");
  }();
  RemoveTree(options_.staging_dir);
  if (!kept.ok()) {
    (void)engine_->GarbageCollect();
    return kept;
  }
  absl::StatusOr<std::vector<StoredBackup>> all = ListLocked();
  if (!all.ok()) return all.status();
  for (const StoredBackup& b : *all) {
    if (b.id == id) return b;
  }
  return absl::InternalError("the new backup is not listed");
}

absl::StatusOr<std::vector<StoredBackup>> RocksDbBackupStore::ListLocked()
    const {
  std::vector<rocksdb::BackupInfo> infos;
  Reader().GetBackupInfo(&infos, /*include_file_details=*/true);
  std::sort(infos.begin(), infos.end(),
            [](const rocksdb::BackupInfo& a, const rocksdb::BackupInfo& b) {
              return a.backup_id < b.backup_id;
            });
  std::vector<StoredBackup> out;
  std::set<std::string> seen;
  for (const rocksdb::BackupInfo& info : infos) {
    StoredBackup b{.id = info.backup_id,
                   .created = absl::FromUnixSeconds(info.timestamp),
                   .size_bytes = info.size,
                   .files = info.number_files,
                   .metadata = info.app_metadata};
    for (const rocksdb::BackupFileInfo& f : info.file_details) {
      // Shared files have the same relative name in every backup holding
      // them; private ones are each backup's own.
      if (seen.insert(f.relative_filename).second) {
        b.new_bytes += f.size;
        ++b.new_files;
      }
    }
    out.push_back(std::move(b));
  }
  return out;
}

absl::StatusOr<std::vector<StoredBackup>> RocksDbBackupStore::List() const {
  absl::ReaderMutexLock lock(&mu_);
  return ListLocked();
}

absl::StatusOr<StoredBackup> RocksDbBackupStore::Get(uint32_t id) const {
  absl::ReaderMutexLock lock(&mu_);
  absl::StatusOr<std::vector<StoredBackup>> all = ListLocked();
  if (!all.ok()) return all.status();
  for (StoredBackup& b : *all) {
    if (b.id == id) return std::move(b);
  }
  return absl::NotFoundError(absl::StrCat("no backup ", id));
}

absl::Status RocksDbBackupStore::VerifyFiles(uint32_t id) const {
  absl::ReaderMutexLock lock(&mu_);
  return FromRocksDb(Reader().VerifyBackup(id, /*verify_with_checksum=*/true),
                     absl::StrCat("verify of backup ", id));
}

absl::StatusOr<std::unique_ptr<StoreView>> RocksDbBackupStore::Open(
    uint32_t id) const {
  absl::ReaderMutexLock lock(&mu_);
  rocksdb::BackupInfo info;
  rocksdb::Status s =
      Reader().GetBackupInfo(id, &info, /*include_file_details=*/true);
  if (s.IsNotFound())
    return absl::NotFoundError(absl::StrCat("no backup ", id));
  if (!s.ok()) return FromRocksDb(s, "backup info");
  absl::StatusOr<std::unique_ptr<RocksDbStorage>> storage =
      RocksDbStorage::Open({.data_dir = info.name_for_open,
                            .read_only = true,
                            .env = info.env_for_open.get()});
  if (!storage.ok()) return storage.status();
  return std::unique_ptr<StoreView>(
      new StorageView(info.env_for_open, *std::move(storage)));
}

absl::Status RocksDbBackupStore::Delete(uint32_t id) {
  absl::MutexLock lock(&mu_);
  if (engine_ == nullptr) {
    return absl::FailedPreconditionError("backup store is read-only");
  }
  rocksdb::BackupInfo info;
  if (engine_->GetBackupInfo(id, &info).IsNotFound()) {
    return absl::NotFoundError(absl::StrCat("no backup ", id));
  }
  return FromRocksDb(engine_->DeleteBackup(id),
                     absl::StrCat("delete of backup ", id));
}

absl::Status RocksDbBackupStore::RestoreTo(uint32_t id,
                                           const std::string& directory) const {
  absl::ReaderMutexLock lock(&mu_);
  if (std::filesystem::exists(directory)) {
    return absl::FailedPreconditionError(
        absl::StrCat("restore target ", directory, " exists"));
  }
  std::error_code ec;
  std::filesystem::create_directories(directory, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot create ", directory, ": ", ec.message()));
  }
  std::filesystem::permissions(directory, std::filesystem::perms::owner_all,
                               ec);
  return FromRocksDb(Reader().RestoreDBFromBackup(rocksdb::RestoreOptions(), id,
                                                  directory, directory),
                     absl::StrCat("restore of backup ", id));
}

}  // namespace cardvault::storage
