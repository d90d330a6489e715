// Files of a data directory that are not the database's own: putting a
// restored copy in place, and small files written durably beside it.
//
// Thread safety: functions only; callers serialise use of one directory.
#ifndef CARDVAULT_SERVER_STORAGE_DATA_DIRECTORY_H_
#define CARDVAULT_SERVER_STORAGE_DATA_DIRECTORY_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace cardvault::storage {

// An exclusive flock(2) on "<data dir>.lock", beside the data directory:
// held by a serving vault and by a restore for as long as they run, so that
// neither starts while the other works on the directory (RocksDB's own LOCK
// is inside the directory a restore exchanges). Released when the owner is
// destroyed or its process dies. Move-only.
class DirectoryLock {
 public:
  // FAILED_PRECONDITION if another process holds it.
  static absl::StatusOr<DirectoryLock> Acquire(const std::string& data_dir);
  DirectoryLock(DirectoryLock&& other) noexcept;
  DirectoryLock& operator=(DirectoryLock&& other) noexcept;
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;
  ~DirectoryLock();

 private:
  explicit DirectoryLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// Puts `restored` in place of `data_dir` in one atomic step (renameat2
// RENAME_EXCHANGE), then renames what was there to `aside`; nothing is
// deleted. Without a `data_dir`, `restored` is renamed into place. Both
// parents are fsynced. Returns where the old directory went ("" if none).
absl::StatusOr<std::string> SwapInDirectory(const std::string& restored,
                                            const std::string& data_dir,
                                            const std::string& aside);

// Renames `from` to `to` (which must not exist: FAILED_PRECONDITION) and
// fsyncs the parent of `to`.
absl::Status RenameDurably(const std::string& from, const std::string& to);

// Writes `bytes` to `path` (mode 0600) through a temporary file, fsynced and
// renamed into place, and fsyncs the directory.
absl::Status WriteFileDurably(const std::string& path, absl::string_view bytes);

// The file's bytes; NOT_FOUND if it does not exist.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path,
                                          size_t max_bytes);

// Removes `path` and fsyncs its directory; OK if it did not exist.
absl::Status RemoveFileDurably(const std::string& path);

}  // namespace cardvault::storage

#endif  // CARDVAULT_SERVER_STORAGE_DATA_DIRECTORY_H_
