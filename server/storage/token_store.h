// Storage interfaces the vault depends on. They hold opaque bytes only:
// sealed records, keyed-hash index entries and wrapped keys, never anything
// in clear.
//
// Thread safety: implementations are thread-safe.
#ifndef CARDVAULT_SERVER_STORAGE_TOKEN_STORE_H_
#define CARDVAULT_SERVER_STORAGE_TOKEN_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace cardvault::storage {

// The tables of token data (formats in vault/card_record.h and
// vault/index_entry.h). Every value may carry an expiry time that
// compaction honours (see RocksDbStorage::Options::expiry_of).
enum class Table : uint8_t {
  kTokens = 0,       // token -> sealed card record
  kPanIndex = 1,     // keyed HMAC of (domain, format, PAN) -> index entry
  kIdempotency = 2,  // keyed HMAC of (identity, key) -> first result
  // What the nodes sharing a store coordinate through (leases, reserved
  // uses, key-admin proposals; formats in coordination/job_lease.h,
  // coordination/use_reservations.h and vault/operation_record.h).
  // Never card data. The one table a commit may write without audit
  // records (transaction.h, CommitUnaudited).
  kShared = 3,
};
inline constexpr int kNumTables = 4;

// Point reads of token data.
class RecordStore {
 public:
  virtual ~RecordStore() = default;

  // The value under `key` in `table`; NOT_FOUND if none.
  virtual absl::StatusOr<std::string> Get(Table table,
                                          absl::string_view key) const = 0;

  // Up to `limit` (key, value) pairs of `table` with keys after
  // `start_after` ("" = from the first), in key order. For background jobs
  // that walk a table in chunks.
  virtual absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Scan(
      Table table, absl::string_view start_after, size_t limit) const = 0;
};

// A put (value set) or a delete (value empty) of one key.
struct RecordWrite {
  Table table = Table::kTokens;
  std::string key;
  std::optional<std::string> value;
};

// The audit trail: sequence -> encoded audit record (see audit/audit_chain.h).
// Written only through TransactionalStore::CommitGroup (transaction.h).
class AuditStore {
 public:
  virtual ~AuditStore() = default;

  // The record with the highest sequence, or nullopt for an empty trail.
  virtual absl::StatusOr<std::optional<std::pair<uint64_t, std::string>>>
  LastAuditRecord() const = 0;

  // The anchor written by the last retention purge, or nullopt.
  virtual absl::StatusOr<std::optional<std::string>> AuditAnchor() const = 0;

  // Calls `visit` for every record from sequence `from` on, in order, until
  // it returns false.
  virtual absl::Status ScanAudit(
      uint64_t from,
      const std::function<bool(uint64_t, absl::string_view)>& visit) const = 0;
};

// One compare-and-set step of KeyStore::UpdateKeys.
struct KeyUpdate {
  std::string key_id;
  // What the record must be now; nullopt = there must be none.
  std::optional<std::string> expected;
  // What it becomes; nullopt = only checked (a fence, e.g. the KEK state).
  std::optional<std::string> record;
};

// Key id -> wrapped key record (and the KEK state, vault/kek_manager.h).
class KeyStore {
 public:
  virtual ~KeyStore() = default;

  // The record under `key_id`; NOT_FOUND if none.
  virtual absl::StatusOr<std::string> GetKey(
      absl::string_view key_id) const = 0;

  // Every (key id, record) pair, in key id order.
  virtual absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
  ListKeys() const = 0;

  // Applies every update in one durable write if every `expected` holds,
  // else changes nothing and returns FAILED_PRECONDITION. Serialised with
  // all other key writes, so a rewrap of every key under a new KEK and the
  // KEK state that names it land together or not at all.
  virtual absl::Status UpdateKeys(
      const std::vector<KeyUpdate>& updates) const = 0;

  // Stores `record` under `key_id` durably; ALREADY_EXISTS if taken (keys are
  // never overwritten).
  absl::Status InsertKey(absl::string_view key_id,
                         absl::string_view record) const;

  // Replaces the record under `key_id` durably if it is still `expected`
  // (FAILED_PRECONDITION otherwise), e.g. with a destroyed key's tombstone.
  absl::Status ReplaceKey(absl::string_view key_id, absl::string_view expected,
                          absl::string_view record) const;

  // The durable counters (Transaction::counter_adds) whose id starts with
  // `prefix`, e.g. one data key's encryption counts.
  virtual absl::StatusOr<std::map<std::string, uint64_t>> CountersWithPrefix(
      absl::string_view prefix) const = 0;

  // Every durable counter so far.
  absl::StatusOr<std::map<std::string, uint64_t>> KeyUses() const {
    return CountersWithPrefix("");
  }
};

inline absl::Status KeyStore::InsertKey(absl::string_view key_id,
                                        absl::string_view record) const {
  absl::Status s = UpdateKeys({{.key_id = std::string(key_id),
                                .expected = std::nullopt,
                                .record = std::string(record)}});
  if (absl::IsFailedPrecondition(s)) {
    return absl::AlreadyExistsError("key record already present");
  }
  return s;
}

inline absl::Status KeyStore::ReplaceKey(absl::string_view key_id,
                                         absl::string_view expected,
                                         absl::string_view record) const {
  return UpdateKeys({{.key_id = std::string(key_id),
                      .expected = std::string(expected),
                      .record = std::string(record)}});
}

}  // namespace cardvault::storage

#endif  // CARDVAULT_SERVER_STORAGE_TOKEN_STORE_H_
