// The process's descriptor budget: the soft RLIMIT_NOFILE raised to the
// hard limit, split between what the vault needs to stay correct (database
// files, the HSM, logs, backups, metrics) and client connections, so that a
// flood of connections can never take the descriptors RocksDB needs for its
// next WAL or SST file.
//
// Thread safety: the functions are thread-safe.
#ifndef CARDVAULT_SERVER_UTIL_DESCRIPTOR_BUDGET_H_
#define CARDVAULT_SERVER_UTIL_DESCRIPTOR_BUDGET_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace cardvault::util {

// Descriptors of a process that are not client connections and not
// database files: gRPC's pollers and wake-ups, the HSM library, logs, the
// metrics file, the CA and CRL files, the listener's own sockets.
inline constexpr uint64_t kBaseReservedDescriptors = 128;
// Fewest descriptors left for connections for the vault to start.
inline constexpr uint64_t kMinConnectionDescriptors = 16;

struct DescriptorBudget {
  uint64_t limit = 0;            // soft RLIMIT_NOFILE, after raising
  uint64_t hard = 0;             // hard RLIMIT_NOFILE
  uint64_t reserved = 0;         // kept for everything but connections
  uint64_t for_connections = 0;  // limit - reserved
  uint64_t open_at_start = 0;    // descriptors open when it was made

  // "descriptors=20000/20000 reserved=1152 connections=18848 open=9", for
  // the start-up hardening line.
  std::string Report() const;
};

// Raises the soft descriptor limit to the hard one and keeps `reserved`
// (plus what is open now) out of the connections' share.
// FAILED_PRECONDITION when fewer than kMinConnectionDescriptors are left.
absl::StatusOr<DescriptorBudget> RaiseDescriptorLimit(uint64_t reserved);

// Descriptors open in this process now (/proc/self/fd).
uint64_t OpenDescriptors();

// Files under `dir`, recursively (a database's SSTs, WALs, manifests).
uint64_t FilesUnder(const std::string& dir);

// EMFILE or ENFILE met `where` ("accepting connections", "writing the
// metrics file", ...): counted, and an ALERT line at a bounded rate.
void NoteDescriptorExhaustion(absl::string_view where);
// The same for a library's error `message` that reports EMFILE or ENFILE
// only as strerror text (RocksDB statuses, gRPC log lines).
void NoteIfOutOfDescriptors(absl::string_view message, absl::string_view where);
uint64_t DescriptorExhaustions();

}  // namespace cardvault::util

#endif  // CARDVAULT_SERVER_UTIL_DESCRIPTOR_BUDGET_H_
