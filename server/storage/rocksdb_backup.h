// Backups of a RocksDbStorage with RocksDB's BackupEngine.
//
// Taking a backup, while the vault serves:
//   1. A RocksDB checkpoint of the live database is made in the staging
//      directory: SST files hard-linked (copied across filesystems), the
//      WAL copied; every column family at one sequence number.
//   2. The copy is opened and described (BackupStore::Describe: the
//      manifest, vault/backup_manifest.h) while nothing writes to it.
//   3. The BackupEngine keeps it: the copy is flushed, files no earlier
//      backup holds are copied into shared_checksum/ (named by checksum and
//      size, so unchanged SSTs are never copied twice), every file's crc32c
//      and size go into the backup's meta file with the manifest, all
//      fsynced; the meta file is renamed into place last, so a crash leaves
//      the complete backup or none (partial files are collected later).
//   4. The staging copy is removed (also at the start of the next backup,
//      after a crash).
// Backup directory layout (RocksDB's): meta/<id> (file list, checksums,
// manifest as hex), shared_checksum/*.sst, private/<id>/ (MANIFEST,
// OPTIONS, CURRENT); and cardvault.lock, held by the one process that may
// add or delete backups. Every file is written once and never changed.
//
// Thread safety: thread-safe; operations are serialised.
#ifndef CARDVAULT_SERVER_STORAGE_ROCKSDB_BACKUP_H_
#define CARDVAULT_SERVER_STORAGE_ROCKSDB_BACKUP_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "rocksdb/utilities/backup_engine.h"
#include "server/storage/backup_store.h"
#include "server/storage/rocksdb_storage.h"

namespace cardvault::storage {

// The database in `data_dir` opened read-only (a stopped vault's).
absl::StatusOr<std::unique_ptr<StoreView>> OpenReadOnlyView(
    const std::string& data_dir);

class RocksDbBackupStore : public BackupStore {
 public:
  struct Options {
    // Required. The backup directory; created (mode 0700) if missing.
    std::string directory;
    // Where the consistent copy is made before it is kept. Hard links need
    // it on the data directory's filesystem. Default "<data dir>.staging".
    std::string staging_dir;
    // Most bytes per second a backup copies or a restore writes; 0 (the
    // default) = unlimited.
    uint64_t rate_limit_bytes_per_second = 0;
    // Opens the backup directory for reading only (list, verify, restore),
    // as a tool may while a vault keeps backups in it. Default false.
    bool read_only = false;
  };

  // `live` is the store backed up (null: no Create, e.g. a restore with the
  // vault stopped); it must outlive this object.
  static absl::StatusOr<std::unique_ptr<RocksDbBackupStore>> Open(
      const RocksDbStorage* live, Options options);

  RocksDbBackupStore(const RocksDbBackupStore&) = delete;
  RocksDbBackupStore& operator=(const RocksDbBackupStore&) = delete;
  ~RocksDbBackupStore() override;

  absl::StatusOr<StoredBackup> Create(const Describe& describe) override;
  absl::StatusOr<std::vector<StoredBackup>> List() const override;
  absl::StatusOr<StoredBackup> Get(uint32_t id) const override;
  absl::Status VerifyFiles(uint32_t id) const override;
  absl::StatusOr<std::unique_ptr<StoreView>> Open(uint32_t id) const override;
  absl::Status Delete(uint32_t id) override;
  absl::Status RestoreTo(uint32_t id,
                         const std::string& directory) const override;

 private:
  RocksDbBackupStore(const RocksDbStorage* live, Options options,
                     std::unique_ptr<rocksdb::BackupEngine> engine,
                     std::unique_ptr<rocksdb::BackupEngineReadOnly> reader,
                     int lock_fd);
  const rocksdb::BackupEngineReadOnlyBase& Reader() const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<StoredBackup>> ListLocked() const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const RocksDbStorage* const live_;
  // flock(2) on <directory>/cardvault.lock while a writer has it open: two
  // BackupEngines appending to one directory could trash it. -1 if none.
  const int lock_fd_;
  const Options options_;
  mutable absl::Mutex mu_;
  // One of the two is set (read_only chooses).
  const std::unique_ptr<rocksdb::BackupEngine> engine_ ABSL_PT_GUARDED_BY(mu_);
  const std::unique_ptr<rocksdb::BackupEngineReadOnly> reader_
      ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace cardvault::storage

#endif  // CARDVAULT_SERVER_STORAGE_ROCKSDB_BACKUP_H_
