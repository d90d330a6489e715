// Backups of a store: consistent, immutable copies of every table, the keys
// and the audit trail, kept in a backup directory. They hold opaque bytes
// only, as the store does.
//
// Thread safety: implementations are thread-safe; operations on one backup
// directory are serialised.
#ifndef CARDVAULT_SERVER_STORAGE_BACKUP_STORE_H_
#define CARDVAULT_SERVER_STORAGE_BACKUP_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/storage/token_store.h"

namespace cardvault::storage {

// A read-only view of a whole store at one point in time: a backup being
// taken, or one opened to be verified.
class StoreView {
 public:
  virtual ~StoreView() = default;
  virtual const RecordStore& records() const = 0;
  virtual const KeyStore& keys() const = 0;
  virtual const AuditStore& audit() const = 0;
};

struct StoredBackup {
  uint32_t id = 0;
  absl::Time created;
  // Bytes and files of the backup, shared files included.
  uint64_t size_bytes = 0;
  uint32_t files = 0;
  // Bytes and files no older backup shares (0 when not known: backups
  // listed by another process than the one that took them).
  uint64_t new_bytes = 0;
  uint32_t new_files = 0;
  // What `describe` returned when the backup was taken.
  std::string metadata;
};

class BackupStore {
 public:
  // Describes a consistent copy about to be kept; its result is stored
  // with the backup. A failure abandons the backup.
  using Describe =
      std::function<absl::StatusOr<std::string>(const StoreView& copy)>;

  virtual ~BackupStore() = default;

  // Takes a consistent copy of the live store (every table at one point),
  // describes it, and keeps it as a new backup, fsynced; only files no
  // earlier backup holds are copied. A crash leaves either the complete
  // backup or none.
  virtual absl::StatusOr<StoredBackup> Create(const Describe& describe) = 0;

  // Every backup kept, oldest first.
  virtual absl::StatusOr<std::vector<StoredBackup>> List() const = 0;

  // NOT_FOUND for an unknown id.
  virtual absl::StatusOr<StoredBackup> Get(uint32_t id) const = 0;

  // Checks every file of the backup against the size and checksum recorded
  // when it was taken: DATA_LOSS naming what differs.
  virtual absl::Status VerifyFiles(uint32_t id) const = 0;

  // Opens the backup read-only, in place.
  virtual absl::StatusOr<std::unique_ptr<StoreView>> Open(
      uint32_t id) const = 0;

  // Deletes the backup and the files no other backup shares.
  virtual absl::Status Delete(uint32_t id) = 0;

  // Writes the backup's store into `directory`, which must not exist.
  virtual absl::Status RestoreTo(uint32_t id,
                                 const std::string& directory) const = 0;
};

}  // namespace cardvault::storage

#endif  // CARDVAULT_SERVER_STORAGE_BACKUP_STORE_H_
