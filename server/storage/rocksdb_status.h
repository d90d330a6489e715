// The one place a rocksdb::Status becomes an absl::Status.
#ifndef CARDVAULT_SERVER_STORAGE_ROCKSDB_STATUS_H_
#define CARDVAULT_SERVER_STORAGE_ROCKSDB_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "rocksdb/status.h"

namespace cardvault::storage {

// I/O, busy and shutdown errors map to UNAVAILABLE (the caller may retry);
// corruption to DATA_LOSS. The RocksDB message is kept: it never holds values.
absl::Status FromRocksDb(const rocksdb::Status& status,
                         absl::string_view operation);

}  // namespace cardvault::storage

#endif  // CARDVAULT_SERVER_STORAGE_ROCKSDB_STATUS_H_
