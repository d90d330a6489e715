// The write contract of every store: transactions, each a set of writes
// under conditions, committed in groups together with the audit records that
// describe the ones that hold, in one atomic durable write (group commit).
//
// The store, not its caller, checks the conditions at commit time, under
// whatever its engine offers to make "check, then write" atomic against
// every other writer of the same data (a lock held across the check and the
// write for the embedded store; a locked chain-head row and locked condition
// rows inside one database transaction for PostgreSQL). Several processes
// writing one database therefore cannot both win a condition: no duplicate
// token, no second deterministic token for a PAN, no double idempotent
// create.
//
// The audit chain is a versioned row: a commit appends records after the
// head it was given and moves the head, so no two writers can fork it.
//
// Thread safety: implementations are thread-safe; CommitGroup calls from
// several threads (or processes) are serialised by the store.
#ifndef CARDVAULT_SERVER_STORAGE_TRANSACTION_H_
#define CARDVAULT_SERVER_STORAGE_TRANSACTION_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/storage/token_store.h"

namespace cardvault::storage {

// What one key of a token-data table must hold for a transaction to commit.
struct Condition {
  Table table = Table::kTokens;
  std::string key;
  // The exact value the key must hold; nullopt: the key must be absent.
  std::optional<std::string> expected;
};

// Writes that commit together, only if every condition holds.
struct Transaction {
  std::vector<Condition> conditions;
  std::vector<RecordWrite> writes;
  // (counter id, n): n more of a durable count (encryptions under a key, a
  // caller's Detokenize calls of one UTC day); adds never conflict.
  std::vector<std::pair<std::string, uint64_t>> counter_adds;
};

// The head of the audit chain: its last record's sequence and chain MAC
// (sequence 0 and an empty MAC for an empty chain).
struct ChainHead {
  uint64_t sequence = 0;
  std::string mac;
};

// What a commit appends to the audit chain (formats in audit/audit_chain.h).
struct ChainAppend {
  // (sequence, encoded record), ascending, the first after the head the
  // describer was given.
  std::vector<std::pair<uint64_t, std::string>> records;
  // Chain MAC of the last record: the new head.
  std::string head_mac;
  // Retention purge: delete records 1..purge_through (0 = none) and store
  // `anchor`, which lets the chain be verified from the first record kept.
  uint64_t purge_through = 0;
  std::optional<std::string> anchor;
};

// Decides what a group commit writes, as the store evaluates it. Called on
// the committing thread, in this order: Begin, then Admit once per
// transaction in group order, then Finish; all again from Begin when the
// store retries the commit (a serialisation conflict or a lost connection
// before the commit), so it must have no effect beyond its answers until
// the commit returns.
class GroupDescriber {
 public:
  virtual ~GroupDescriber() = default;

  // Starts from the chain head as the committing transaction sees it.
  virtual void Begin(const ChainHead& head) = 0;

  // Transaction `index`'s conditions hold (`failed_condition` < 0) or do not
  // (the index of the first that failed). Returns whether it is part of the
  // commit: never when a condition failed; the describer may also leave out
  // one that holds (its record would be too large). A transaction admitted
  // here is visible to the conditions of the ones after it.
  virtual bool Admit(size_t index, int failed_condition) = 0;

  // The audit records of what was admitted. Without records only writes
  // to Table::kShared may be admitted (the store refuses token data,
  // counters or a purge written unaudited, INTERNAL); with neither,
  // nothing is written.
  virtual ChainAppend Finish() = 0;
};

class TransactionalStore {
 public:
  virtual ~TransactionalStore() = default;

  // Commits the transactions of `group` that `describer` admits, and the
  // records it returns, in one atomic durable write: OK once durable (an
  // fsync, or a database commit); UNAVAILABLE when nothing was written;
  // UNKNOWN when the store could not learn whether the commit happened
  // (the caller must not acknowledge anything, and must not assume it
  // failed either). An ambiguous commit is resolved by reading back before
  // UNKNOWN is ever returned.
  virtual absl::Status CommitGroup(absl::Span<const Transaction> group,
                                   GroupDescriber& describer) const = 0;

  // The head of the audit chain now.
  virtual absl::StatusOr<ChainHead> ChainHeadNow() const = 0;
};

// Everything the vault needs of a store: the embedded RocksDB store and the
// PostgreSQL store both are one, and pass one conformance suite
// (tests/server/storage/store_conformance_test.cc).
class Store : public RecordStore,
              public KeyStore,
              public AuditStore,
              public TransactionalStore {};

// Commits `t` alone and without an audit record: for the coordination
// state of Table::kShared (a lease renewed, a block of uses reserved), whose
// every change is not an event. `t` may write only Table::kShared (and add
// no counter); its conditions may name any table. OK once durable;
// FAILED_PRECONDITION when a condition does not hold (nothing written);
// UNAVAILABLE; UNKNOWN when the outcome could not be learnt, which the
// caller resolves by reading its keys back (its values must be unique, e.g.
// carry a fencing number).
absl::Status CommitUnaudited(const TransactionalStore& store,
                             const Transaction& t);

// Evaluates the conditions of a group in order, each seeing the writes of
// the transactions admitted before it: the part of CommitGroup every store
// shares. `read` answers for a key nothing earlier in the group wrote: its
// value, nullopt if absent, or the error that prevents knowing.
class ConditionEvaluator {
 public:
  using Read = std::function<absl::StatusOr<std::optional<std::string>>(
      Table, absl::string_view)>;

  explicit ConditionEvaluator(Read read) : read_(std::move(read)) {}

  // The index of the first condition of `t` that does not hold (-1: all
  // hold), or a read error.
  absl::StatusOr<int> FirstFailed(const Transaction& t) const;

  // Makes `t`'s writes visible to later conditions.
  void Apply(const Transaction& t);

  // Runs `describer` over `group` from `head` (Begin, Admit per
  // transaction, applying those admitted, Finish) after forgetting anything
  // applied before: the evaluation every store's CommitGroup shares. Its
  // records, checked to follow `head` and to describe every write to token
  // data (INTERNAL otherwise), or a read error.
  absl::StatusOr<ChainAppend> Describe(absl::Span<const Transaction> group,
                                       const ChainHead& head,
                                       GroupDescriber& describer);

  // The final value of every key the admitted transactions wrote (nullopt:
  // deleted), each key once, in the order first written.
  const std::vector<
      std::pair<std::pair<Table, std::string>, std::optional<std::string>>>&
  final_writes() const {
    return final_;
  }

  // The counter adds of the admitted transactions, one per counter.
  std::vector<std::pair<std::string, uint64_t>> CounterAdds() const;

  // Forgets everything applied (a retried commit).
  void Reset();

 private:
  Read read_;
  std::vector<
      std::pair<std::pair<Table, std::string>, std::optional<std::string>>>
      final_;
  absl::flat_hash_map<std::pair<Table, std::string>, size_t> position_;
  std::vector<std::pair<std::string, uint64_t>> counters_;
  absl::flat_hash_map<std::string, size_t> counter_position_;
};

}  // namespace cardvault::storage

#endif  // CARDVAULT_SERVER_STORAGE_TRANSACTION_H_
