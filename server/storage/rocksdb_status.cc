#include "server/storage/rocksdb_status.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "server/util/descriptor_budget.h"

namespace cardvault::storage {

absl::Status FromRocksDb(const rocksdb::Status& status,
                         absl::string_view operation) {
  if (status.ok()) return absl::OkStatus();
  const std::string message =
      absl::StrCat("storage ", operation, " failed: ", status.ToString());
  if (status.IsIOError())
    util::NoteIfOutOfDescriptors(message, "in the database");
  switch (status.code()) {
    case rocksdb::Status::kNotFound:
      return absl::NotFoundError(message);
    case rocksdb::Status::kCorruption:
      return absl::DataLossError(message);
    case rocksdb::Status::kNotSupported:
      return absl::UnimplementedError(message);
    case rocksdb::Status::kInvalidArgument:
      return absl::InvalidArgumentError(message);
    case rocksdb::Status::kIOError:
    case rocksdb::Status::kBusy:
    case rocksdb::Status::kTimedOut:
    case rocksdb::Status::kTryAgain:
    case rocksdb::Status::kShutdownInProgress:
    case rocksdb::Status::kIncomplete:
      return absl::UnavailableError(message);
    case rocksdb::Status::kAborted:
      return absl::AbortedError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace cardvault::storage
