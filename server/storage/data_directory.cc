#include "server/storage/data_directory.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"

namespace cardvault::storage {
namespace {

std::string ParentOf(const std::string& path) {
  std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

absl::Status SyncDirectory(const std::string& dir) {
  const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot open ", dir, ": ", std::strerror(errno)));
  }
  const int rc = fsync(fd);
  close(fd);
  if (rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("fsync of ", dir, " failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::UnavailableError(
      absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

}  // namespace

absl::StatusOr<DirectoryLock> DirectoryLock::Acquire(
    const std::string& data_dir) {
  const std::string path = data_dir + ".lock";
  std::error_code ec;
  std::filesystem::create_directories(ParentOf(data_dir), ec);
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("cannot open", path);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    return absl::FailedPreconditionError(absl::StrCat(
        data_dir, " is in use: a cardvaultd or a restore holds ", path));
  }
  return DirectoryLock(fd);
}

DirectoryLock::DirectoryLock(DirectoryLock&& other) noexcept : fd_(other.fd_) {
  other.fd_ = -1;
}

DirectoryLock& DirectoryLock::operator=(DirectoryLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<std::string> SwapInDirectory(const std::string& restored,
                                            const std::string& data_dir,
                                            const std::string& aside) {
  std::error_code ec;
  if (!std::filesystem::exists(data_dir, ec)) {
    if (rename(restored.c_str(), data_dir.c_str()) != 0) {
      return Errno("cannot rename into place", data_dir);
    }
    if (absl::Status s = SyncDirectory(ParentOf(data_dir)); !s.ok()) return s;
    return std::string();
  }
  if (std::filesystem::exists(aside, ec)) {
    return absl::FailedPreconditionError(absl::StrCat(aside, " exists"));
  }
  // One step: a crash leaves either the old directory or the restored one
  // in place, never neither.
  if (syscall(SYS_renameat2, AT_FDCWD, restored.c_str(), AT_FDCWD,
              data_dir.c_str(), RENAME_EXCHANGE) != 0) {
    return Errno("cannot exchange with", data_dir);
  }
  if (absl::Status s = SyncDirectory(ParentOf(data_dir)); !s.ok()) return s;
  if (rename(restored.c_str(), aside.c_str()) != 0) {
    return Errno("cannot move the old data directory to", aside);
  }
  if (absl::Status s = SyncDirectory(ParentOf(aside)); !s.ok()) return s;
  return aside;
}

absl::Status RenameDurably(const std::string& from, const std::string& to) {
  std::error_code ec;
  if (std::filesystem::exists(std::filesystem::symlink_status(to, ec))) {
    return absl::FailedPreconditionError(absl::StrCat(to, " exists"));
  }
  if (rename(from.c_str(), to.c_str()) != 0) {
    return Errno("cannot rename into place", to);
  }
  return SyncDirectory(ParentOf(to));
}

absl::Status WriteFileDurably(const std::string& path,
                              absl::string_view bytes) {
  const std::string tmp = path + ".tmp";
  const int fd =
      open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("cannot create", tmp);
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(fd);
      return Errno("cannot write", tmp);
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) {
    close(fd);
    return Errno("fsync failed for", tmp);
  }
  close(fd);
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    return Errno("cannot rename into place", path);
  }
  return SyncDirectory(ParentOf(path));
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path,
                                          size_t max_bytes) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no ", path));
    return Errno("cannot open", path);
  }
  std::string out;
  char buffer[4096];
  for (;;) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      close(fd);
      return Errno("cannot read", path);
    }
    if (n == 0) break;
    out.append(buffer, static_cast<size_t>(n));
    if (out.size() > max_bytes) {
      close(fd);
      return absl::DataLossError(absl::StrCat(path, " is too large"));
    }
  }
  close(fd);
  return out;
}

absl::Status RemoveFileDurably(const std::string& path) {
  if (unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return Errno("cannot remove", path);
  }
  return SyncDirectory(ParentOf(path));
}

}  // namespace cardvault::storage
