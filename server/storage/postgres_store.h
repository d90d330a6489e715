// PostgreSQL implementation of the storage contract (transaction.h), for
// several vault nodes on one database. libpq is used directly, in pipeline
// mode: a group commit is two round trips and one database commit however
// many transactions it holds.
//
// Schema version 1 (postgres_schema.h applies it; start-up refuses any other
// version). Every key and value is BYTEA (byte order, no collation, no
// encoding); nothing in clear is ever a parameter, and no SQL text holds a
// value (every value is a bound binary parameter):
//   tokens, pan_index, idempotency
//       (k BYTEA PRIMARY KEY, v BYTEA NOT NULL, expires_ms BIGINT NULL)
//       the three token-data tables of token_store.h; expires_ms is
//       Options::expiry_of(table, v) in Unix milliseconds, NULL = never; a
//       sweeper deletes expired rows in bounded chunks (SweepExpired)
//   wrapped_keys (id BYTEA PRIMARY KEY, record BYTEA NOT NULL)
//       KeyStore: wrapped key records and the KEK state
//   counters     (id BYTEA PRIMARY KEY, n BIGINT NOT NULL)
//       Transaction::counter_adds, summed by INSERT ... ON CONFLICT DO UPDATE
//   audit_records (seq BIGINT PRIMARY KEY, record BYTEA NOT NULL)
//       audit/audit_chain.h records; seq is the chain's own sequence, set by
//       the vault, never a database sequence
//   audit_head   (id INT PRIMARY KEY CHECK (id = 1), seq BIGINT, mac BYTEA)
//       the chain head, one row
//   audit_anchor (id INT PRIMARY KEY CHECK (id = 1), anchor BYTEA)
//   cardvault_schema (id INT PRIMARY KEY CHECK (id = 1), version INT, ...)
//
// A group commit is one READ COMMITTED transaction:
//   round trip 1: BEGIN; SELECT the head row FOR UPDATE; SELECT every
//     condition's row FOR UPDATE (one statement per table, k = ANY($1)).
//     The head lock serialises the group commits of every node, so the
//     conditions are read after every earlier commit and before any later
//     one; the row locks keep the rows read from changing under other
//     writers (the TTL sweeper, key updates) until the commit.
//   the describer decides, from what was read, what the group writes;
//   round trip 2: one multi-row statement per table for puts (unnest of
//     arrays), one for deletes, the counters, the records, the head update
//     (WHERE seq = the head read: a version check), COMMIT.
// A serialisation failure or deadlock (40001, 40P01) or a lost connection
// before COMMIT was sent rolls back and is retried from round trip 1 (the
// describer is asked again). A commit whose outcome is unknown (40003, or
// the connection lost after COMMIT was sent) is resolved by reading back the
// group's last audit record from a new connection: present with the bytes
// written means committed, absent means not (retried); never guessed.
//
// Portable to CockroachDB and YugabyteDB: no advisory locks, no sequences,
// no ordering by anything but client-chosen keys, ON CONFLICT upserts,
// SELECT ... FOR UPDATE, unnest of arrays, retries on 40001/40P01 and read
// back on 40003 (docs/multinode.md lists what is relied on).
//
// Thread safety: thread-safe; each connection is used by one thread at a
// time (a pool of them).
#ifndef CARDVAULT_SERVER_STORAGE_POSTGRES_STORE_H_
#define CARDVAULT_SERVER_STORAGE_POSTGRES_STORE_H_

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/storage/pg_connection.h"
#include "server/storage/transaction.h"

namespace cardvault::storage {

// The schema version this build reads and writes.
inline constexpr int kPostgresSchemaVersion = 2;

// Most keys one coalesced read asks for (see Options::max_concurrent_reads).
inline constexpr size_t kMaxKeysPerRead = 256;

class PostgresStore : public Store {
 public:
  struct Options {
    // libpq connection string (host, port, dbname, user, sslmode,
    // passfile, target_session_attrs...). Never logged: it may hold a
    // password.
    std::string conninfo;
    // Connections kept open for reads and commits. Default 8.
    int pool_size = 8;
    // Reads of one table in flight at once (each table has its own bound,
    // all share the pool). Gets beyond it wait and share the next read: one
    // statement for all their keys (at most kMaxKeysPerRead), so a burst of
    // Detokenize calls costs a few round trips, not one each. Default 4.
    int max_concurrent_reads = 4;
    // When a token-data value expires (InfiniteFuture = never). Unset:
    // nothing expires.
    std::function<absl::Time(Table, absl::string_view key,
                             absl::string_view value)>
        expiry_of = nullptr;
    // Attempts of one group commit on serialisation failures and lost
    // connections before UNAVAILABLE. Default 5.
    int max_commit_attempts = 5;
    // How long an unknown commit outcome is retried to be read back before
    // UNKNOWN. The write path waits this long with its queue behind it, so
    // it stays below the callers' deadlines. Default 2 s.
    absl::Duration resolve_timeout = absl::Seconds(2);
  };

  // Connects and checks the schema version: FAILED_PRECONDITION for a
  // database without the schema or with another version (run
  // `cardvaultd --migrate`), UNAVAILABLE if the server cannot be reached.
  static absl::StatusOr<std::unique_ptr<PostgresStore>> Open(Options options);

  PostgresStore(const PostgresStore&) = delete;
  PostgresStore& operator=(const PostgresStore&) = delete;
  ~PostgresStore() override;

  absl::StatusOr<std::string> Get(Table table,
                                  absl::string_view key) const override;
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Scan(
      Table table, absl::string_view start_after, size_t limit) const override;

  absl::StatusOr<std::string> GetKey(absl::string_view key_id) const override;
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ListKeys()
      const override;
  absl::Status UpdateKeys(const std::vector<KeyUpdate>& updates) const override;
  absl::StatusOr<std::map<std::string, uint64_t>> CountersWithPrefix(
      absl::string_view prefix) const override;

  absl::StatusOr<std::optional<std::pair<uint64_t, std::string>>>
  LastAuditRecord() const override;
  absl::StatusOr<std::optional<std::string>> AuditAnchor() const override;
  absl::Status ScanAudit(uint64_t from,
                         const std::function<bool(uint64_t, absl::string_view)>&
                             visit) const override;

  absl::Status CommitGroup(absl::Span<const Transaction> group,
                           GroupDescriber& describer) const override;
  absl::StatusOr<ChainHead> ChainHeadNow() const override;

  // Deletes up to `limit` token-data rows that expired before `now`, per
  // table; returns how many. For the TTL sweeper (a background job).
  absl::StatusOr<uint64_t> SweepExpired(absl::Time now, size_t limit) const;

  // SweepExpired in chunks of `batch` until nothing expired is left: one
  // run of the TTL sweep job (coordination/background_work.h). Not fenced:
  // its deletes re-check expiry, so a second sweeper deletes nothing twice.
  absl::Status SweepAllExpired(absl::Time now, size_t batch) const;

  // Statements Get has sent so far, and Gets waiting for a read to start
  // (for tests and metrics of the coalescing).
  uint64_t read_statements() const { return read_statements_.load(); }
  size_t queued_reads() const;

 private:
  class Pool;
  enum class Attempt { kDone, kRetry, kUnknown };

  PostgresStore(Options options, std::unique_ptr<Pool> pool);

  // One attempt of CommitGroup on `conn`; `*status` is the result when
  // kDone, or the error when kRetry or kUnknown.
  Attempt TryCommitGroup(PgConnection& conn,
                         absl::Span<const Transaction> group,
                         GroupDescriber& describer, std::string* last_record,
                         uint64_t* last_sequence, absl::Status* status) const;
  // The key records under `ids` now, from any connection, retried until
  // resolve_timeout (an unknown commit outcome).
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReadKeysBack(
      const std::vector<std::string>& ids) const;
  // Whether the record at `sequence` is `record` (the commit that wrote it
  // happened), reading from a fresh connection until resolve_timeout.
  absl::StatusOr<bool> ResolveCommit(uint64_t sequence,
                                     absl::string_view record) const;

  // A Get waiting for its key (Get, ReadBatch).
  struct QueuedRead;
  // Reads every key of `batch` in one statement and answers each of them.
  void ReadBatch(Table table, absl::Span<QueuedRead* const> batch) const;

  const Options options_;
  const std::unique_ptr<Pool> pool_;
  mutable absl::Mutex reads_mu_;
  // Per table: Gets not yet taken into a read, and reads in flight.
  mutable std::vector<std::deque<QueuedRead*>> queued_reads_
      ABSL_GUARDED_BY(reads_mu_);
  mutable std::vector<int> reads_in_flight_ ABSL_GUARDED_BY(reads_mu_);
  mutable std::atomic<uint64_t> read_statements_{0};
};

}  // namespace cardvault::storage

#endif  // CARDVAULT_SERVER_STORAGE_POSTGRES_STORE_H_
