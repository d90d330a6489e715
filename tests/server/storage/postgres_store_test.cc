// What the PostgreSQL store does beyond the shared contract
// (store_conformance_test.cc): its schema version, migrations, and riding
// through a database restart.
#include "server/storage/postgres_store.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/pg_connection.h"
#include "server/storage/postgres_schema.h"
#include "tests/testing/eventually.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/store_writes.h"

namespace cardvault::storage {
namespace {

using ::cardvault::testing::CommitOne;
using ::cardvault::testing::IsOk;
using ::cardvault::testing::IsOkAndHolds;
using ::cardvault::testing::PostgresServer;
using ::cardvault::testing::Put;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

class PostgresStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = PostgresServer::Start({});
    ASSERT_THAT(server, IsOk());
    server_ = *std::move(server);
  }
  // A connection holding the tokens table locked until it commits: reads of
  // the table wait behind it.
  absl::StatusOr<PgConnection> LockTokensTable() {
    absl::StatusOr<PgConnection> locker =
        PgConnection::Connect(server_->conninfo());
    if (!locker.ok()) return locker.status();
    for (absl::string_view sql :
         {"BEGIN", "LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE"}) {
      if (absl::Status s = locker->Exec(sql).status(); !s.ok()) return s;
    }
    return locker;
  }
  std::unique_ptr<PostgresServer> server_;
};

TEST_F(PostgresStoreTest, OpenRefusesADatabaseWithoutTheSchema) {
  EXPECT_THAT(
      PostgresStore::Open({.conninfo = server_->conninfo()}),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("--migrate")));
}

TEST_F(PostgresStoreTest, MigrationIsIdempotentAndRecordsItsVersion) {
  ASSERT_FALSE(PostgresMigrations().empty());
  EXPECT_EQ(PostgresMigrations().back().version, kPostgresSchemaVersion);
  auto first = MigratePostgres(server_->conninfo());
  ASSERT_THAT(first, IsOk());
  EXPECT_EQ(first->from_version, 0);
  EXPECT_EQ(first->to_version, kPostgresSchemaVersion);
  auto again = MigratePostgres(server_->conninfo());
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->from_version, kPostgresSchemaVersion);
  EXPECT_EQ(again->to_version, kPostgresSchemaVersion);
  auto conn = PgConnection::Connect(server_->conninfo());
  ASSERT_THAT(conn, IsOk());
  auto rows = conn->Exec("SELECT count(*) FROM cardvault_migrations");
  ASSERT_THAT(rows, IsOk());
  EXPECT_THAT(rows->Int8(0, 0), IsOkAndHolds(kPostgresSchemaVersion));
  EXPECT_THAT(PostgresStore::Open({.conninfo = server_->conninfo()}), IsOk());
}

TEST_F(PostgresStoreTest, OpenAndMigrationRefuseANewerSchema) {
  ASSERT_THAT(MigratePostgres(server_->conninfo()), IsOk());
  auto conn = PgConnection::Connect(server_->conninfo());
  ASSERT_THAT(conn, IsOk());
  ASSERT_THAT(conn->Exec("UPDATE cardvault_schema SET version = 99"), IsOk());
  EXPECT_THAT(
      PostgresStore::Open({.conninfo = server_->conninfo()}),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("version 99")));
  EXPECT_THAT(MigratePostgres(server_->conninfo()),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(PostgresStoreTest, CommitsFailWhileTheDatabaseIsDownAndResumeAfter) {
  ASSERT_THAT(MigratePostgres(server_->conninfo()), IsOk());
  auto store = PostgresStore::Open({.conninfo = server_->conninfo(),
                                    .pool_size = 2,
                                    .max_commit_attempts = 2});
  ASSERT_THAT(store, IsOk());
  ASSERT_THAT(CommitOne(**store, Put(Table::kTokens, "tok_a", "before")),
              IsOk());
  server_->Kill();
  EXPECT_THAT(CommitOne(**store, Put(Table::kTokens, "tok_b", "during")),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT((*store)->Get(Table::kTokens, "tok_a"),
              StatusIs(absl::StatusCode::kUnavailable));
  ASSERT_THAT(server_->Start(), IsOk());
  // The pool reconnects by itself; what was acknowledged is there.
  EXPECT_THAT((*store)->Get(Table::kTokens, "tok_a"),
              IsOkAndHolds(std::string("before")));
  EXPECT_THAT((*store)->Get(Table::kTokens, "tok_b"),
              StatusIs(absl::StatusCode::kNotFound));
  ASSERT_THAT(CommitOne(**store, Put(Table::kTokens, "tok_c", "after")),
              IsOk());
  EXPECT_THAT((*store)->ChainHeadNow(),
              IsOkAndHolds(::testing::Field(&ChainHead::sequence, 2u)));
}

// Gets that wait while reads are in flight share the next one: with one
// read in flight allowed and that read held up by a table lock, fifty Gets
// queue, then one statement answers all of them, each with its own value
// (or NOT_FOUND).
TEST_F(PostgresStoreTest, ConcurrentGetsShareOneRead) {
  ASSERT_THAT(MigratePostgres(server_->conninfo()), IsOk());
  auto store = PostgresStore::Open(
      {.conninfo = server_->conninfo(), .max_concurrent_reads = 1});
  ASSERT_THAT(store, IsOk());
  Transaction t;
  for (int i = 0; i < 40; ++i) {
    t.writes.push_back(
        {Table::kTokens, absl::StrCat("tok_", i), absl::StrCat("v", i)});
  }
  ASSERT_THAT(CommitOne(**store, t), IsOk());
  const uint64_t before = (*store)->read_statements();

  absl::StatusOr<PgConnection> locker = LockTokensTable();
  ASSERT_THAT(locker, IsOk());
  constexpr int kGets = 51;
  std::vector<absl::StatusOr<std::string>> results(kGets);
  std::vector<std::thread> threads;
  // The first read is in flight (blocked on the lock) before the rest come.
  threads.emplace_back(
      [&] { results[0] = (*store)->Get(Table::kTokens, "tok_0"); });
  ASSERT_TRUE(testing::Eventually(absl::Seconds(10), [&] {
    return (*store)->read_statements() == before + 1;
  }));
  for (int i = 1; i < kGets; ++i) {
    threads.emplace_back([&, i] {
      results[i] = (*store)->Get(Table::kTokens, absl::StrCat("tok_", i));
    });
  }
  ASSERT_TRUE(testing::Eventually(absl::Seconds(10), [&] {
    return (*store)->queued_reads() == kGets - 1;
  }));
  ASSERT_THAT(locker->Exec("COMMIT"), IsOk());
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ((*store)->read_statements(), before + 2);
  for (int i = 0; i < kGets; ++i) {
    SCOPED_TRACE(i);
    if (i < 40) {
      EXPECT_THAT(results[i], IsOkAndHolds(absl::StrCat("v", i)));
    } else {
      EXPECT_THAT(results[i], StatusIs(absl::StatusCode::kNotFound));
    }
  }
  EXPECT_EQ((*store)->queued_reads(), 0u);
}

// Hostile keys through shared reads: more Gets than kMaxKeysPerRead wait,
// keys of every byte value (empty, NULs, one a prefix of another, differing
// only in their last byte), each asked for twice; each Get gets its own
// key's value and nothing waits forever.
TEST_F(PostgresStoreTest, SharedReadsKeepBinaryKeysApart) {
  ASSERT_THAT(MigratePostgres(server_->conninfo()), IsOk());
  auto store = PostgresStore::Open(
      {.conninfo = server_->conninfo(), .max_concurrent_reads = 1});
  ASSERT_THAT(store, IsOk());
  std::vector<std::string> keys = {"", std::string(1, '\0'),
                                   std::string(2, '\0')};
  for (int i = 0; i < 256; ++i) {
    keys.push_back(std::string("k") + static_cast<char>(i));
    keys.push_back(std::string("k") + static_cast<char>(i) + '\xff');
  }
  Transaction t;
  for (size_t i = 0; i < keys.size(); i += 2) {  // every other one stored
    t.writes.push_back({Table::kTokens, keys[i], absl::StrCat("v", i)});
  }
  ASSERT_THAT(CommitOne(**store, t), IsOk());
  const uint64_t before = (*store)->read_statements();
  absl::StatusOr<PgConnection> locker = LockTokensTable();
  ASSERT_THAT(locker, IsOk());
  const size_t gets = 2 * keys.size();
  std::vector<absl::StatusOr<std::string>> results(gets);
  std::vector<std::thread> threads;
  for (size_t g = 0; g < gets; ++g) {
    threads.emplace_back([&, g] {
      results[g] = (*store)->Get(Table::kTokens, keys[g % keys.size()]);
    });
  }
  ASSERT_TRUE(testing::Eventually(
      absl::Seconds(20), [&] { return (*store)->queued_reads() == gets - 1; }));
  ASSERT_THAT(locker->Exec("COMMIT"), IsOk());
  for (std::thread& thread : threads) thread.join();
  for (size_t g = 0; g < gets; ++g) {
    SCOPED_TRACE(g);
    const size_t i = g % keys.size();
    if (i % 2 == 0) {
      EXPECT_THAT(results[g], IsOkAndHolds(absl::StrCat("v", i)));
    } else {
      EXPECT_THAT(results[g], StatusIs(absl::StatusCode::kNotFound));
    }
  }
  // One blocked read, then the queue in reads of at most kMaxKeysPerRead.
  EXPECT_EQ((*store)->read_statements(),
            before + 1 + (gets - 1 + kMaxKeysPerRead - 1) / kMaxKeysPerRead);
  EXPECT_EQ((*store)->queued_reads(), 0u);
}

// A read that fails answers every Get that shared it with its error.
TEST_F(PostgresStoreTest, ASharedReadThatFailsFailsEveryGetOfIt) {
  ASSERT_THAT(MigratePostgres(server_->conninfo()), IsOk());
  auto store = PostgresStore::Open({.conninfo = server_->conninfo(),
                                    .pool_size = 1,
                                    .max_concurrent_reads = 1});
  ASSERT_THAT(store, IsOk());
  ASSERT_THAT(CommitOne(**store, Put(Table::kTokens, "tok_a", "a")), IsOk());
  server_->Kill();
  std::vector<std::thread> threads;
  std::atomic<int> unavailable{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      if (absl::IsUnavailable(
              (*store)->Get(Table::kTokens, "tok_a").status())) {
        ++unavailable;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(unavailable.load(), 8);
  EXPECT_EQ((*store)->queued_reads(), 0u);
  ASSERT_THAT(server_->Start(), IsOk());
  EXPECT_THAT((*store)->Get(Table::kTokens, "tok_a"),
              IsOkAndHolds(std::string("a")));
}

TEST_F(PostgresStoreTest, ExpiredTokenDataIsSweptInChunks) {
  ASSERT_THAT(MigratePostgres(server_->conninfo()), IsOk());
  // Values "exp" expire at t = 1000 s; anything else never.
  auto store = PostgresStore::Open(
      {.conninfo = server_->conninfo(),
       .expiry_of = [](Table, absl::string_view, absl::string_view v) {
         return v == "exp" ? absl::FromUnixSeconds(1000)
                           : absl::InfiniteFuture();
       }});
  ASSERT_THAT(store, IsOk());
  Transaction t;
  for (int i = 0; i < 5; ++i) {
    t.writes.push_back({Table::kTokens, absl::StrCat("tok_", i), "exp"});
  }
  t.writes.push_back({Table::kPanIndex, "idx", "exp"});
  t.writes.push_back({Table::kTokens, "tok_kept", "kept"});
  ASSERT_THAT(CommitOne(**store, t), IsOk());
  EXPECT_THAT((*store)->SweepExpired(absl::FromUnixSeconds(999), 100),
              IsOkAndHolds(0u));
  // 3 per table per call: 3 tokens and the index entry, then 2 tokens.
  EXPECT_THAT((*store)->SweepExpired(absl::FromUnixSeconds(1000), 3),
              IsOkAndHolds(4u));
  EXPECT_THAT((*store)->SweepExpired(absl::FromUnixSeconds(1000), 3),
              IsOkAndHolds(2u));
  EXPECT_THAT((*store)->Scan(Table::kTokens, "", 10),
              IsOkAndHolds(::testing::SizeIs(1)));
}

TEST_F(PostgresStoreTest, TheSweepJobDeletesEveryExpiredRowInChunks) {
  ASSERT_THAT(MigratePostgres(server_->conninfo()), IsOk());
  auto store = PostgresStore::Open(
      {.conninfo = server_->conninfo(),
       .expiry_of = [](Table, absl::string_view, absl::string_view v) {
         return v == "exp" ? absl::FromUnixSeconds(1000)
                           : absl::InfiniteFuture();
       }});
  ASSERT_THAT(store, IsOk());
  Transaction t;
  for (int i = 0; i < 5; ++i) {
    t.writes.push_back({Table::kTokens, absl::StrCat("tok_", i), "exp"});
  }
  t.writes.push_back({Table::kTokens, "tok_kept", "kept"});
  ASSERT_THAT(CommitOne(**store, t), IsOk());
  ASSERT_THAT((*store)->SweepAllExpired(absl::FromUnixSeconds(999), 2), IsOk());
  EXPECT_THAT((*store)->Scan(Table::kTokens, "", 10),
              IsOkAndHolds(::testing::SizeIs(6)));  // not yet expired
  ASSERT_THAT((*store)->SweepAllExpired(absl::FromUnixSeconds(1000), 2),
              IsOk());
  EXPECT_THAT((*store)->Scan(Table::kTokens, "", 10),
              IsOkAndHolds(
                  ::testing::ElementsAre(::testing::Pair("tok_kept", "kept"))));
}

TEST_F(PostgresStoreTest, ErrorsNeverEchoAValue) {
  ASSERT_THAT(MigratePostgres(server_->conninfo()), IsOk());
  auto conn = PgConnection::Connect(server_->conninfo());
  ASSERT_THAT(conn, IsOk());
  const std::string pan = "4111111111111111";
  PgParams p;
  p.AddBytea(pan);
  p.AddBytea("record");
  ASSERT_THAT(conn->Exec("INSERT INTO wrapped_keys VALUES ($1, $2)", p),
              IsOk());
  PgParams again;
  again.AddBytea(pan);
  again.AddBytea("record");
  auto dup = conn->Exec("INSERT INTO wrapped_keys VALUES ($1, $2)", again);
  EXPECT_THAT(dup, StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(std::string(dup.status().message()), Not(HasSubstr(pan)));
  EXPECT_THAT(std::string(dup.status().message()), Not(HasSubstr("3431")));
}

}  // namespace
}  // namespace cardvault::storage
