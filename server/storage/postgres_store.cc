#include "server/storage/postgres_store.h"

#include <pthread.h>

#include <algorithm>
#include <map>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "server/storage/pg_status.h"
#include "server/util/log.h"

namespace cardvault::storage {
namespace {

constexpr const char* kTableNames[kNumTables] = {"tokens", "pan_index",
                                                 "idempotency", "shared_state"};

const char* TableName(Table t) { return kTableNames[static_cast<size_t>(t)]; }

// A statement whose failure a retry can cure: another writer won a
// serialisation conflict or a deadlock, or the connection was lost.
bool Retryable(const absl::Status& s) {
  return absl::IsAborted(s) || absl::IsUnavailable(s);
}

// Every row of a result whose columns are two byteas.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> BytePairs(
    const PgResult& r) {
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(r.rows());
  for (int i = 0; i < r.rows(); ++i) {
    absl::StatusOr<absl::string_view> k = r.Bytea(i, 0);
    if (!k.ok()) return k.status();
    absl::StatusOr<absl::string_view> v = r.Bytea(i, 1);
    if (!v.ok()) return v.status();
    out.emplace_back(std::string(*k), std::string(*v));
  }
  return out;
}

// Every row of a result of (int8, bytea).
absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> NumberedBytes(
    const PgResult& r) {
  std::vector<std::pair<int64_t, std::string>> out;
  out.reserve(r.rows());
  for (int i = 0; i < r.rows(); ++i) {
    absl::StatusOr<int64_t> n = r.Int8(i, 0);
    if (!n.ok()) return n.status();
    absl::StatusOr<absl::string_view> v = r.Bytea(i, 1);
    if (!v.ok()) return v.status();
    out.emplace_back(*n, std::string(*v));
  }
  return out;
}

// The one bytea of a one-row result; NOT_FOUND for no row.
absl::StatusOr<std::string> OneBytea(const PgResult& r) {
  if (r.rows() == 0) return absl::NotFoundError("no such row");
  absl::StatusOr<absl::string_view> v = r.Bytea(0, 0);
  if (!v.ok()) return v.status();
  return std::string(*v);
}

// Rolls back whatever the connection has open (best effort: a connection
// that cannot is discarded by its caller).
void RollBack(PgConnection& c) {
  if (c.healthy() && c.transaction_status() != PQTRANS_IDLE) {
    (void)c.Exec("ROLLBACK");
  }
}

// Expiry sent for a value that never expires (stored as NULL).
constexpr int64_t kNeverExpires = -1;

}  // namespace

// Connections, each used by one thread at a time; a broken one is replaced
// at its next use.
class PostgresStore::Pool {
 public:
  Pool(std::string conninfo, int size)
      : conninfo_(std::move(conninfo)), size_(size) {}

  // A connection for the caller alone until the lease ends.
  class Lease {
   public:
    Lease(Pool* pool, std::unique_ptr<PgConnection> conn)
        : pool_(pool), conn_(std::move(conn)) {}
    Lease(Lease&&) = default;
    ~Lease() {
      if (conn_ != nullptr) pool_->Return(std::move(conn_));
    }
    PgConnection& operator*() { return *conn_; }
    PgConnection* operator->() { return conn_.get(); }
    // Closes the connection instead of returning it (its state is unknown),
    // freeing its slot.
    void Discard() {
      conn_.reset();
      pool_->Return(nullptr);
    }

   private:
    Pool* pool_;
    std::unique_ptr<PgConnection> conn_;
  };

  absl::StatusOr<Lease> Acquire() {
    std::unique_ptr<PgConnection> conn;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Pool* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
            return !p->idle_.empty() || p->open_ < p->size_;
          },
          this));
      if (!idle_.empty()) {
        conn = std::move(idle_.back());
        idle_.pop_back();
      } else {
        ++open_;
      }
    }
    if (conn != nullptr && conn->healthy()) return Lease(this, std::move(conn));
    conn.reset();
    absl::StatusOr<PgConnection> fresh = PgConnection::Connect(conninfo_);
    if (!fresh.ok()) {
      absl::MutexLock lock(&mu_);
      --open_;
      return fresh.status();
    }
    return Lease(this, std::make_unique<PgConnection>(*std::move(fresh)));
  }

 private:
  void Return(std::unique_ptr<PgConnection> conn) {
    absl::MutexLock lock(&mu_);
    // A connection left inside a transaction never serves another caller.
    if (conn == nullptr || !conn->healthy() ||
        conn->transaction_status() != PQTRANS_IDLE) {
      --open_;
      return;
    }
    idle_.push_back(std::move(conn));
  }

  const std::string conninfo_;
  const int size_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<PgConnection>> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;
};

absl::StatusOr<std::unique_ptr<PostgresStore>> PostgresStore::Open(
    Options options) {
  if (options.conninfo.empty() || options.pool_size < 1 ||
      options.max_commit_attempts < 1) {
    return absl::InvalidArgumentError("bad PostgreSQL store options");
  }
  auto pool = std::make_unique<Pool>(options.conninfo, options.pool_size);
  {
    absl::StatusOr<Pool::Lease> conn = pool->Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<PgResult> version =
        (*conn)->Exec("SELECT version FROM cardvault_schema WHERE id = 1");
    if (!version.ok()) {
      if (SqlStateOf(version.status()) == "42P01") {  // undefined_table
        return absl::FailedPreconditionError(
            "the database has no cardvault schema; run cardvaultd --migrate");
      }
      return version.status();
    }
    absl::StatusOr<int64_t> found =
        version->rows() == 1 ? version->Int8(0, 0) : absl::StatusOr<int64_t>(0);
    if (!found.ok()) return found.status();
    if (*found != kPostgresSchemaVersion) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the database's cardvault schema is version ", *found,
          "; this build needs ", kPostgresSchemaVersion,
          " (run cardvaultd --migrate, or a build that knows it)"));
    }
  }
  std::unique_ptr<PostgresStore> store(
      new PostgresStore(std::move(options), std::move(pool)));
  return store;
}

PostgresStore::PostgresStore(Options options, std::unique_ptr<Pool> pool)
    : options_(std::move(options)),
      pool_(std::move(pool)),
      queued_reads_(kNumTables),
      reads_in_flight_(kNumTables, 0) {}

PostgresStore::~PostgresStore() = default;

struct PostgresStore::QueuedRead {
  absl::string_view key;
  absl::StatusOr<std::string> result = absl::UnknownError("not read");
  bool taken = false;  // in a read's batch
  bool done = false;   // `result` is the answer
};

absl::StatusOr<std::string> PostgresStore::Get(Table table,
                                               absl::string_view key) const {
  const size_t t = static_cast<size_t>(table);
  const int max_reads = std::max(1, options_.max_concurrent_reads);
  QueuedRead me{.key = key};
  struct Wait {
    const QueuedRead* me;
    const int* in_flight;
    int max;
  } wait{&me, nullptr, max_reads};
  absl::MutexLock lock(&reads_mu_);
  wait.in_flight = &reads_in_flight_[t];
  queued_reads_[t].push_back(&me);
  while (!me.done) {
    // Done, or not yet taken by another Get's read while one may start.
    reads_mu_.Await(absl::Condition(
        +[](Wait* w) {
          return w->me->done || (!w->me->taken && *w->in_flight < w->max);
        },
        &wait));
    if (me.done) break;
    // This Get starts a read for the queue's front, which holds it unless
    // more than kMaxKeysPerRead Gets wait before it (then it loops).
    std::vector<QueuedRead*> batch;
    std::deque<QueuedRead*>& queue = queued_reads_[t];
    while (!queue.empty() && batch.size() < kMaxKeysPerRead) {
      batch.push_back(queue.front());
      batch.back()->taken = true;
      queue.pop_front();
    }
    ++reads_in_flight_[t];
    reads_mu_.Unlock();
    ReadBatch(table, batch);
    reads_mu_.Lock();
    --reads_in_flight_[t];
    for (QueuedRead* read : batch) read->done = true;
  }
  return std::move(me.result);
}

size_t PostgresStore::queued_reads() const {
  absl::MutexLock lock(&reads_mu_);
  size_t n = 0;
  for (const std::deque<QueuedRead*>& queue : queued_reads_) n += queue.size();
  return n;
}

void PostgresStore::ReadBatch(Table table,
                              absl::Span<QueuedRead* const> batch) const {
  auto answer_all = [&](const absl::Status& status) {
    for (QueuedRead* read : batch) read->result = status;
  };
  ++read_statements_;
  absl::StatusOr<Pool::Lease> conn = pool_->Acquire();
  if (!conn.ok()) return answer_all(conn.status());
  std::vector<absl::string_view> keys;
  keys.reserve(batch.size());
  for (const QueuedRead* read : batch) keys.push_back(read->key);
  PgParams params;
  params.AddByteaArray(absl::MakeConstSpan(keys));
  absl::StatusOr<PgResult> r =
      (*conn)->Exec(absl::StrCat("SELECT k, v FROM ", TableName(table),
                                 " WHERE k = ANY($1::bytea[])"),
                    params);
  if (!r.ok()) return answer_all(r.status());
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> rows =
      BytePairs(*r);
  if (!rows.ok()) return answer_all(rows.status());
  absl::flat_hash_map<absl::string_view, absl::string_view> found;
  for (const auto& [k, v] : *rows) found.emplace(k, v);
  for (QueuedRead* read : batch) {
    auto it = found.find(read->key);
    if (it == found.end()) {
      read->result = absl::NotFoundError("no such key");
    } else {
      read->result = std::string(it->second);
    }
  }
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
PostgresStore::Scan(Table table, absl::string_view start_after,
                    size_t limit) const {
  absl::StatusOr<Pool::Lease> conn = pool_->Acquire();
  if (!conn.ok()) return conn.status();
  PgParams params;
  params.AddBytea(start_after);
  params.AddInt8(static_cast<int64_t>(limit));
  absl::StatusOr<PgResult> r =
      (*conn)->Exec(absl::StrCat("SELECT k, v FROM ", TableName(table),
                                 " WHERE k > $1 ORDER BY k LIMIT $2"),
                    params);
  if (!r.ok()) return r.status();
  return BytePairs(*r);
}

absl::StatusOr<std::string> PostgresStore::GetKey(
    absl::string_view key_id) const {
  absl::StatusOr<Pool::Lease> conn = pool_->Acquire();
  if (!conn.ok()) return conn.status();
  PgParams params;
  params.AddBytea(key_id);
  absl::StatusOr<PgResult> r =
      (*conn)->Exec("SELECT record FROM wrapped_keys WHERE id = $1", params);
  if (!r.ok()) return r.status();
  absl::StatusOr<std::string> v = OneBytea(*r);
  if (absl::IsNotFound(v.status())) {
    return absl::NotFoundError("no such key record");
  }
  return v;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
PostgresStore::ListKeys() const {
  absl::StatusOr<Pool::Lease> conn = pool_->Acquire();
  if (!conn.ok()) return conn.status();
  absl::StatusOr<PgResult> r =
      (*conn)->Exec("SELECT id, record FROM wrapped_keys ORDER BY id");
  if (!r.ok()) return r.status();
  return BytePairs(*r);
}

absl::Status PostgresStore::UpdateKeys(
    const std::vector<KeyUpdate>& updates) const {
  if (updates.empty()) return absl::OkStatus();
  std::vector<std::string> ids;
  for (const KeyUpdate& u : updates) ids.push_back(u.key_id);
  absl::Status last = absl::UnavailableError("key update not attempted");
  for (int attempt = 0; attempt < options_.max_commit_attempts; ++attempt) {
    absl::StatusOr<Pool::Lease> conn = pool_->Acquire();
    if (!conn.ok()) {
      last = conn.status();
      continue;
    }
    PgConnection& c = **conn;
    PgParams read;
    read.AddByteaArray(absl::MakeConstSpan(ids));
    c.Queue("BEGIN ISOLATION LEVEL READ COMMITTED");
    c.Queue(
        "SELECT id, record FROM wrapped_keys WHERE id = ANY($1::bytea[]) "
        "FOR UPDATE",
        read);
    std::vector<PgStatementResult> first = c.Sync();
    absl::Status read_status = FirstError(first);
    absl::StatusOr<std::vector<std::pair<std::string, std::string>>> rows =
        read_status.ok()
            ? BytePairs(first[1].result)
            : absl::StatusOr<std::vector<std::pair<std::string, std::string>>>(
                  read_status);
    if (!rows.ok()) {
      last = rows.status();
      RollBack(c);
      conn->Discard();
      if (Retryable(last)) continue;
      return last;
    }
    std::map<std::string, std::string> now(rows->begin(), rows->end());
    for (const KeyUpdate& u : updates) {
      auto it = now.find(u.key_id);
      const bool holds = u.expected.has_value()
                             ? it != now.end() && it->second == *u.expected
                             : it == now.end();
      if (!holds) {
        RollBack(c);
        return absl::FailedPreconditionError(
            absl::StrCat("key record ", u.key_id, " changed"));
      }
    }
    for (const KeyUpdate& u : updates) {
      if (!u.record.has_value()) continue;
      PgParams w;
      w.AddBytea(u.key_id);
      w.AddBytea(*u.record);
      // An absent row is inserted (a concurrent insert of the same id fails
      // with a unique violation); a present one, locked above, is updated.
      c.Queue(u.expected.has_value()
                  ? "UPDATE wrapped_keys SET record = $2 WHERE id = $1"
                  : "INSERT INTO wrapped_keys (id, record) VALUES ($1, $2)",
              w);
    }
    c.Queue("COMMIT");
    std::vector<PgStatementResult> second = c.Sync();
    const absl::Status written = FirstError(second);
    if (written.ok()) return absl::OkStatus();
    const bool commit_failed =
        second.back().status.code() == written.code() &&
        FirstError(absl::MakeConstSpan(second).first(second.size() - 1)).ok();
    RollBack(c);
    conn->Discard();
    if (absl::IsAlreadyExists(written)) {
      return absl::FailedPreconditionError("key record inserted concurrently");
    }
    if (commit_failed && !absl::IsAborted(written)) {
      // The COMMIT's own outcome is unknown: read back what it would have
      // written.
      absl::StatusOr<std::vector<std::pair<std::string, std::string>>> after =
          ReadKeysBack(ids);
      if (!after.ok()) {
        return absl::UnknownError(
            "the outcome of a key update is unknown: the database could not "
            "be read back");
      }
      std::map<std::string, std::string> stored(after->begin(), after->end());
      bool applied = true;
      for (const KeyUpdate& u : updates) {
        if (u.record.has_value() &&
            (!stored.contains(u.key_id) || stored[u.key_id] != *u.record)) {
          applied = false;
        }
      }
      if (applied) return absl::OkStatus();
    }
    last = written;
    if (!Retryable(written) && !absl::IsUnknown(written)) return written;
  }
  return last;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
PostgresStore::ReadKeysBack(const std::vector<std::string>& ids) const {
  const absl::Time deadline = absl::Now() + options_.resolve_timeout;
  absl::Status last;
  do {
    absl::StatusOr<Pool::Lease> conn = pool_->Acquire();
    if (conn.ok()) {
      PgParams p;
      p.AddByteaArray(absl::MakeConstSpan(ids));
      absl::StatusOr<PgResult> r = (*conn)->Exec(
          "SELECT id, record FROM wrapped_keys WHERE id = ANY($1::bytea[])", p);
      if (r.ok()) return BytePairs(*r);
      last = r.status();
      conn->Discard();
    } else {
      last = conn.status();
    }
    absl::SleepFor(absl::Milliseconds(200));
  } while (absl::Now() < deadline);
  return last;
}

absl::StatusOr<std::map<std::string, uint64_t>>
PostgresStore::CountersWithPrefix(absl::string_view prefix) const {
  absl::StatusOr<Pool::Lease> conn = pool_->Acquire();
  if (!conn.ok()) return conn.status();
  // A bytea range [prefix, the next prefix), not LIKE: an index range scan
  // on every engine.
  std::string end(prefix);
  while (!end.empty() && static_cast<uint8_t>(end.back()) == 0xff) {
    end.pop_back();
  }
  if (!end.empty()) end.back() = static_cast<char>(end.back() + 1);
  PgParams p;
  p.AddBytea(prefix);
  if (!end.empty()) p.AddBytea(end);
  absl::StatusOr<PgResult> r = (*conn)->Exec(
      end.empty() ? "SELECT n, id FROM counters WHERE id >= $1 ORDER BY id"
                  : "SELECT n, id FROM counters WHERE id >= $1 AND id < $2 "
                    "ORDER BY id",
      p);
  if (!r.ok()) return r.status();
  absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> rows =
      NumberedBytes(*r);
  if (!rows.ok()) return rows.status();
  std::map<std::string, uint64_t> out;
  for (auto& [n, id] : *rows) out.emplace(std::move(id), n);
  return out;
}

absl::StatusOr<std::optional<std::pair<uint64_t, std::string>>>
PostgresStore::LastAuditRecord() const {
  absl::StatusOr<Pool::Lease> conn = pool_->Acquire();
  if (!conn.ok()) return conn.status();
  absl::StatusOr<PgResult> r = (*conn)->Exec(
      "SELECT seq, record FROM audit_records ORDER BY seq DESC LIMIT 1");
  if (!r.ok()) return r.status();
  absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> rows =
      NumberedBytes(*r);
  if (!rows.ok()) return rows.status();
  if (rows->empty()) return std::nullopt;
  return std::make_pair(static_cast<uint64_t>((*rows)[0].first),
                        std::move((*rows)[0].second));
}

absl::StatusOr<std::optional<std::string>> PostgresStore::AuditAnchor() const {
  absl::StatusOr<Pool::Lease> conn = pool_->Acquire();
  if (!conn.ok()) return conn.status();
  absl::StatusOr<PgResult> r =
      (*conn)->Exec("SELECT anchor FROM audit_anchor WHERE id = 1");
  if (!r.ok()) return r.status();
  absl::StatusOr<std::string> anchor = OneBytea(*r);
  if (absl::IsNotFound(anchor.status())) return std::nullopt;
  if (!anchor.ok()) return anchor.status();
  return *std::move(anchor);
}

absl::Status PostgresStore::ScanAudit(
    uint64_t from,
    const std::function<bool(uint64_t, absl::string_view)>& visit) const {
  // In pages, so that a long trail costs bounded memory and no statement
  // holds a snapshot for the whole walk.
  constexpr int64_t kPage = 512;
  int64_t next = static_cast<int64_t>(std::max<uint64_t>(from, 1));
  while (true) {
    absl::StatusOr<Pool::Lease> conn = pool_->Acquire();
    if (!conn.ok()) return conn.status();
    PgParams params;
    params.AddInt8(next);
    params.AddInt8(kPage);
    absl::StatusOr<PgResult> r = (*conn)->Exec(
        "SELECT seq, record FROM audit_records WHERE seq >= $1 ORDER BY seq "
        "LIMIT $2",
        params);
    if (!r.ok()) return r.status();
    absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> rows =
        NumberedBytes(*r);
    if (!rows.ok()) return rows.status();
    for (const auto& [seq, record] : *rows) {
      if (!visit(static_cast<uint64_t>(seq), record)) return absl::OkStatus();
      next = seq + 1;
    }
    if (static_cast<int64_t>(rows->size()) < kPage) return absl::OkStatus();
  }
}

absl::StatusOr<ChainHead> PostgresStore::ChainHeadNow() const {
  absl::StatusOr<Pool::Lease> conn = pool_->Acquire();
  if (!conn.ok()) return conn.status();
  absl::StatusOr<PgResult> r =
      (*conn)->Exec("SELECT seq, mac FROM audit_head WHERE id = 1");
  if (!r.ok()) return r.status();
  absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> rows =
      NumberedBytes(*r);
  if (!rows.ok()) return rows.status();
  if (rows->size() != 1)
    return absl::DataLossError("audit head row is missing");
  return ChainHead{.sequence = static_cast<uint64_t>((*rows)[0].first),
                   .mac = std::move((*rows)[0].second)};
}

absl::Status PostgresStore::CommitGroup(absl::Span<const Transaction> group,
                                        GroupDescriber& describer) const {
  absl::Status last = absl::UnavailableError("commit not attempted");
  for (int attempt = 0; attempt < options_.max_commit_attempts; ++attempt) {
    if (attempt > 0) {
      // Backs off a little more each time: a failover takes seconds.
      absl::SleepFor(absl::Milliseconds(20) * (1 << std::min(attempt, 6)));
    }
    absl::StatusOr<Pool::Lease> conn = pool_->Acquire();
    if (!conn.ok()) {
      last = conn.status();
      continue;
    }
    std::string last_record;
    uint64_t last_sequence = 0;
    absl::Status status;
    const Attempt outcome = TryCommitGroup(
        **conn, group, describer, &last_record, &last_sequence, &status);
    if (outcome == Attempt::kDone) return status;
    conn->Discard();
    last = status;
    if (outcome == Attempt::kUnknown && last_sequence == 0) {
      return absl::UnknownError(
          "the database commit's outcome is unknown; read the keys back");
    }
    if (outcome == Attempt::kUnknown) {
      absl::StatusOr<bool> committed =
          ResolveCommit(last_sequence, last_record);
      if (!committed.ok()) {
        return absl::UnknownError(
            "the database commit's outcome is unknown: the database could "
            "not be read back");
      }
      if (*committed) return absl::OkStatus();
      continue;  // not committed: try again from the start
    }
    if (!Retryable(status)) return status;
  }
  return absl::UnavailableError(
      absl::StrCat("database commit failed: ", last.message()));
}

PostgresStore::Attempt PostgresStore::TryCommitGroup(
    PgConnection& c, absl::Span<const Transaction> group,
    GroupDescriber& describer, std::string* last_record,
    uint64_t* last_sequence, absl::Status* status) const {
  auto finish = [&](absl::Status s, Attempt a) {
    *status = std::move(s);
    RollBack(c);
    return a;
  };
  // Round trip 1: the head and every condition's row, locked.
  std::vector<std::vector<std::string>> keys(kNumTables);
  for (const Transaction& t : group) {
    for (const Condition& cond : t.conditions) {
      keys[static_cast<size_t>(cond.table)].push_back(cond.key);
    }
  }
  c.Queue("BEGIN ISOLATION LEVEL READ COMMITTED");
  c.Queue("SELECT seq, mac FROM audit_head WHERE id = 1 FOR UPDATE");
  std::vector<int> read_of(kNumTables, -1);
  int statements = 2;
  for (int t = 0; t < kNumTables; ++t) {
    if (keys[t].empty()) continue;
    PgParams p;
    p.AddByteaArray(absl::MakeConstSpan(keys[t]));
    c.Queue(absl::StrCat("SELECT k, v FROM ", kTableNames[t],
                         " WHERE k = ANY($1::bytea[]) FOR UPDATE"),
            p);
    read_of[t] = statements++;
  }
  std::vector<PgStatementResult> first = c.Sync();
  if (absl::Status s = FirstError(first); !s.ok()) {
    return finish(s, Attempt::kRetry);
  }
  absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> head_row =
      NumberedBytes(first[1].result);
  if (!head_row.ok()) return finish(head_row.status(), Attempt::kDone);
  if (head_row->size() != 1) {
    return finish(absl::DataLossError("audit head row is missing"),
                  Attempt::kDone);
  }
  const ChainHead head{.sequence = static_cast<uint64_t>((*head_row)[0].first),
                       .mac = (*head_row)[0].second};
  std::vector<absl::flat_hash_map<std::string, std::string>> stored(kNumTables);
  for (int t = 0; t < kNumTables; ++t) {
    if (read_of[t] < 0) continue;
    absl::StatusOr<std::vector<std::pair<std::string, std::string>>> rows =
        BytePairs(first[read_of[t]].result);
    if (!rows.ok()) return finish(rows.status(), Attempt::kDone);
    for (auto& [k, v] : *rows) stored[t].emplace(std::move(k), std::move(v));
  }
  ConditionEvaluator evaluator(
      [&](Table table,
          absl::string_view key) -> absl::StatusOr<std::optional<std::string>> {
        const auto& rows = stored[static_cast<size_t>(table)];
        auto it = rows.find(key);
        if (it == rows.end()) return std::nullopt;
        return it->second;
      });
  absl::StatusOr<ChainAppend> described =
      evaluator.Describe(group, head, describer);
  if (!described.ok()) return finish(described.status(), Attempt::kDone);
  ChainAppend& append = *described;
  const bool audited = !append.records.empty();
  if (!audited && evaluator.final_writes().empty()) {
    return finish(absl::OkStatus(), Attempt::kDone);
  }

  // Round trip 2: everything written, then COMMIT.
  struct Puts {
    std::vector<std::string> keys, values;
    std::vector<int64_t> expires;
  };
  std::vector<Puts> puts(kNumTables);
  std::vector<std::vector<std::string>> deletes(kNumTables);
  for (const auto& [where, value] : evaluator.final_writes()) {
    const size_t t = static_cast<size_t>(where.first);
    if (!value.has_value()) {
      deletes[t].push_back(where.second);
      continue;
    }
    puts[t].keys.push_back(where.second);
    puts[t].values.push_back(*value);
    int64_t expires = kNeverExpires;
    if (options_.expiry_of) {
      const absl::Time at =
          options_.expiry_of(where.first, where.second, *value);
      if (at != absl::InfiniteFuture()) {
        expires = std::max<int64_t>(0, absl::ToUnixMillis(at));
      }
    }
    puts[t].expires.push_back(expires);
  }
  for (int t = 0; t < kNumTables; ++t) {
    if (!deletes[t].empty()) {
      PgParams p;
      p.AddByteaArray(absl::MakeConstSpan(deletes[t]));
      c.Queue(absl::StrCat("DELETE FROM ", kTableNames[t],
                           " WHERE k = ANY($1::bytea[])"),
              p);
    }
    if (!puts[t].keys.empty()) {
      PgParams p;
      p.AddByteaArray(absl::MakeConstSpan(puts[t].keys));
      p.AddByteaArray(absl::MakeConstSpan(puts[t].values));
      p.AddInt8Array(puts[t].expires);
      c.Queue(absl::StrCat(
                  "INSERT INTO ", kTableNames[t],
                  " (k, v, expires_ms) SELECT k, v, NULLIF(e, -1) FROM "
                  "unnest($1::bytea[], $2::bytea[], $3::int8[]) AS u(k, v, e) "
                  "ON CONFLICT (k) DO UPDATE SET v = excluded.v, expires_ms = "
                  "excluded.expires_ms"),
              p);
    }
  }
  const std::vector<std::pair<std::string, uint64_t>> counters =
      evaluator.CounterAdds();
  if (!counters.empty()) {
    std::vector<std::string> ids;
    std::vector<int64_t> adds;
    for (const auto& [id, n] : counters) {
      ids.push_back(id);
      adds.push_back(static_cast<int64_t>(n));
    }
    PgParams p;
    p.AddByteaArray(absl::MakeConstSpan(ids));
    p.AddInt8Array(adds);
    c.Queue(
        "INSERT INTO counters (id, n) SELECT * FROM unnest($1::bytea[], "
        "$2::int8[]) ON CONFLICT (id) DO UPDATE SET n = counters.n + "
        "excluded.n",
        p);
  }
  if (audited) {
    std::vector<int64_t> sequences;
    std::vector<absl::string_view> records;
    for (const auto& [seq, record] : append.records) {
      sequences.push_back(static_cast<int64_t>(seq));
      records.push_back(record);
    }
    PgParams p;
    p.AddInt8Array(sequences);
    p.AddByteaArray(absl::MakeConstSpan(records));
    c.Queue(
        "INSERT INTO audit_records (seq, record) SELECT * FROM "
        "unnest($1::int8[], $2::bytea[])",
        p);
  }
  if (append.purge_through > 0) {
    PgParams p;
    p.AddInt8(static_cast<int64_t>(append.purge_through));
    c.Queue("DELETE FROM audit_records WHERE seq <= $1", p);
  }
  if (append.anchor.has_value()) {
    PgParams p;
    p.AddBytea(*append.anchor);
    c.Queue(
        "INSERT INTO audit_anchor (id, anchor) VALUES (1, $1) ON CONFLICT "
        "(id) DO UPDATE SET anchor = excluded.anchor",
        p);
  }
  if (audited) {
    PgParams p;
    p.AddInt8(static_cast<int64_t>(append.records.back().first));
    p.AddBytea(append.head_mac);
    p.AddInt8(static_cast<int64_t>(head.sequence));
    c.Queue(
        "UPDATE audit_head SET seq = $1, mac = $2 WHERE id = 1 AND seq = $3",
        p);
  }
  c.Queue("COMMIT");
  // An unaudited commit has no record to read back: its caller resolves an
  // unknown outcome by reading its own keys (CommitUnaudited).
  *last_sequence = audited ? append.records.back().first : 0;
  if (audited) *last_record = append.records.back().second;
  std::vector<PgStatementResult> second = c.Sync();
  const size_t commit = second.size() - 1;
  const absl::Status before_commit =
      FirstError(absl::MakeConstSpan(second).first(commit));
  for (const PgStatementResult& r : second) {
    if (absl::IsUnavailable(r.status)) {
      // The connection was lost with the COMMIT in flight: it may have run.
      *status = r.status;
      return Attempt::kUnknown;
    }
  }
  if (!before_commit.ok()) {
    // Rolled back: a statement before COMMIT failed on the server.
    return finish(before_commit, Attempt::kRetry);
  }
  if (audited && second[commit - 1].result.affected_rows() != 1) {
    // Cannot happen while the head row is locked; never written blind.
    return finish(absl::InternalError("audit head moved during a commit"),
                  Attempt::kDone);
  }
  const absl::Status& committed = second[commit].status;
  if (committed.ok()) {
    *status = absl::OkStatus();
    return Attempt::kDone;
  }
  if (absl::IsAborted(committed)) return finish(committed, Attempt::kRetry);
  // UNAVAILABLE (lost during COMMIT), UNKNOWN (40003, a cancelled wait for
  // the standby): it may have committed.
  *status = committed;
  return Attempt::kUnknown;
}

absl::StatusOr<bool> PostgresStore::ResolveCommit(
    uint64_t sequence, absl::string_view record) const {
  const absl::Time deadline = absl::Now() + options_.resolve_timeout;
  absl::Status last;
  do {
    absl::StatusOr<PgConnection> conn =
        PgConnection::Connect(options_.conninfo);
    if (conn.ok()) {
      PgParams p;
      p.AddInt8(static_cast<int64_t>(sequence));
      absl::StatusOr<PgResult> r =
          conn->Exec("SELECT record FROM audit_records WHERE seq = $1", p);
      if (r.ok()) {
        absl::StatusOr<std::string> stored = OneBytea(*r);
        if (absl::IsNotFound(stored.status())) return false;
        if (stored.ok()) return *stored == record;
        return stored.status();
      }
      last = r.status();
    } else {
      last = conn.status();
    }
    absl::SleepFor(absl::Milliseconds(200));
  } while (absl::Now() < deadline);
  return last;
}

absl::Status PostgresStore::SweepAllExpired(absl::Time now,
                                            size_t batch) const {
  for (;;) {
    absl::StatusOr<uint64_t> swept = SweepExpired(now, batch);
    if (!swept.ok()) return swept.status();
    if (*swept == 0) return absl::OkStatus();
  }
}

absl::StatusOr<uint64_t> PostgresStore::SweepExpired(absl::Time now,
                                                     size_t limit) const {
  uint64_t swept = 0;
  for (int t = 0; t < kNumTables; ++t) {
    absl::StatusOr<Pool::Lease> conn = pool_->Acquire();
    if (!conn.ok()) return conn.status();
    PgParams p;
    p.AddInt8(absl::ToUnixMillis(now));
    p.AddInt8(static_cast<int64_t>(limit));
    absl::StatusOr<PgResult> r = (*conn)->Exec(
        absl::StrCat("DELETE FROM ", kTableNames[t],
                     " WHERE k IN (SELECT k FROM ", kTableNames[t],
                     " WHERE expires_ms <= $1 LIMIT $2) AND expires_ms <= $1"),
        p);
    if (!r.ok()) return r.status();
    swept += static_cast<uint64_t>(r->affected_rows());
  }
  return swept;
}

}  // namespace cardvault::storage
