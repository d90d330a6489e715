// The storage contract (storage/transaction.h, storage/token_store.h), one
// suite run against every store: the embedded RocksDB store and the
// PostgreSQL store (a real server started for the test).
#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/pg_connection.h"
#include "server/storage/postgres_schema.h"
#include "server/storage/postgres_store.h"
#include "server/storage/rocksdb_storage.h"
#include "server/storage/transaction.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/store_writes.h"

namespace cardvault::storage {
namespace {

using ::cardvault::testing::CommitOne;
using ::cardvault::testing::IsOk;
using ::cardvault::testing::IsOkAndHolds;
using ::cardvault::testing::PlaceholderRecords;
using ::cardvault::testing::Put;
using ::cardvault::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;

// Opens stores of one kind on one set of data.
class StoreHarness {
 public:
  virtual ~StoreHarness() = default;
  // A store on the data; for a store that admits one process, only while
  // no other instance is open.
  virtual absl::StatusOr<std::unique_ptr<Store>> Open() = 0;
  // Whether several instances may be open at once (several vault nodes).
  virtual bool SharesData() const = 0;
};

class RocksDbHarness : public StoreHarness {
 public:
  RocksDbHarness()
      : dir_(std::filesystem::temp_directory_path() /
             ("cardvault-conformance-" + std::to_string(getpid()) + "-" +
              std::to_string(counter_++))) {
    std::filesystem::remove_all(dir_);
  }
  ~RocksDbHarness() override { std::filesystem::remove_all(dir_); }
  absl::StatusOr<std::unique_ptr<Store>> Open() override {
    absl::StatusOr<std::unique_ptr<RocksDbStorage>> db =
        RocksDbStorage::Open({.data_dir = dir_.string()});
    if (!db.ok()) return db.status();
    return std::unique_ptr<Store>(std::move(*db));
  }
  bool SharesData() const override { return false; }

 private:
  static inline std::atomic<int> counter_{0};
  std::filesystem::path dir_;
};

// One PostgreSQL server for the whole binary (a new database per test),
// stopped and removed when the binary's tests end.
const ::testing::Environment* const kPostgresEnvironment =
    ::testing::AddGlobalTestEnvironment(new testing::SharedPostgresServer);

class PostgresHarness : public StoreHarness {
 public:
  PostgresHarness() {
    testing::PostgresServer* server = testing::SharedPostgresServer::server();
    if (server == nullptr) return;
    const std::string database = absl::StrCat("conformance_", counter_++);
    auto admin = PgConnection::Connect(server->conninfo("postgres"));
    EXPECT_THAT(admin, IsOk());
    if (!admin.ok()) return;
    EXPECT_THAT(admin->Exec(absl::StrCat("CREATE DATABASE ", database)),
                IsOk());
    conninfo_ = server->conninfo(database);
    EXPECT_THAT(MigratePostgres(conninfo_), IsOk());
  }
  absl::StatusOr<std::unique_ptr<Store>> Open() override {
    if (conninfo_.empty()) return absl::UnavailableError("no PostgreSQL");
    absl::StatusOr<std::unique_ptr<PostgresStore>> store =
        PostgresStore::Open({.conninfo = conninfo_, .pool_size = 4});
    if (!store.ok()) return store.status();
    return std::unique_ptr<Store>(std::move(*store));
  }
  bool SharesData() const override { return true; }

 private:
  static inline std::atomic<int> counter_{0};
  std::string conninfo_;
};

using HarnessFactory = std::function<std::unique_ptr<StoreHarness>()>;

struct StoreKind {
  std::string name;
  HarnessFactory make;
};

class StoreConformanceTest : public ::testing::TestWithParam<StoreKind> {
 protected:
  void SetUp() override {
    harness_ = GetParam().make();
    ASSERT_NE(harness_, nullptr);
    auto s = harness_->Open();
    ASSERT_THAT(s, IsOk());
    store_ = *std::move(s);
  }
  void Reopen() {
    store_.reset();
    auto s = harness_->Open();
    ASSERT_THAT(s, IsOk());
    store_ = *std::move(s);
  }
  std::unique_ptr<StoreHarness> harness_;
  std::unique_ptr<Store> store_;
};

Transaction Insert(Table table, std::string key, std::string value) {
  Transaction t;
  t.conditions.push_back({table, key, std::nullopt});
  t.writes.push_back({table, std::move(key), std::move(value)});
  return t;
}

TEST_P(StoreConformanceTest, GetReturnsCommittedValue) {
  ASSERT_THAT(CommitOne(*store_, Put(Table::kTokens, "tok_a", "record-a")),
              IsOk());
  EXPECT_THAT(store_->Get(Table::kTokens, "tok_a"),
              IsOkAndHolds(std::string("record-a")));
  EXPECT_THAT(store_->Get(Table::kTokens, "tok_b"),
              StatusIs(absl::StatusCode::kNotFound));
  // Tables are separate key spaces.
  EXPECT_THAT(store_->Get(Table::kPanIndex, "tok_a"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_P(StoreConformanceTest, KeysAndValuesAreBytes) {
  std::string every_byte;
  for (int i = 0; i < 256; ++i) every_byte.push_back(static_cast<char>(i));
  const std::string key = std::string("\0k\xff", 3);
  ASSERT_THAT(CommitOne(*store_, Put(Table::kIdempotency, key, every_byte)),
              IsOk());
  ASSERT_THAT(CommitOne(*store_, Put(Table::kPanIndex, "empty", "")), IsOk());
  EXPECT_THAT(store_->Get(Table::kIdempotency, key), IsOkAndHolds(every_byte));
  EXPECT_THAT(store_->Get(Table::kPanIndex, "empty"),
              IsOkAndHolds(std::string()));
}

TEST_P(StoreConformanceTest, AbsentConditionFailsWhenTheKeyIsTaken) {
  ASSERT_THAT(CommitOne(*store_, Insert(Table::kTokens, "tok_a", "first")),
              IsOk());
  int failed = -2;
  Transaction second = Insert(Table::kTokens, "tok_a", "second");
  second.writes.push_back({Table::kPanIndex, "idx", "tok_a"});
  ASSERT_THAT(CommitOne(*store_, second, &failed), IsOk());
  EXPECT_EQ(failed, 0);
  // Nothing of the failed transaction is written.
  EXPECT_THAT(store_->Get(Table::kTokens, "tok_a"),
              IsOkAndHolds(std::string("first")));
  EXPECT_THAT(store_->Get(Table::kPanIndex, "idx"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_P(StoreConformanceTest, EqualsConditionNamesTheConditionThatFailed) {
  ASSERT_THAT(CommitOne(*store_, Put(Table::kTokens, "tok_a", "v1")), IsOk());
  Transaction t;
  t.conditions.push_back({Table::kTokens, "tok_a", "v1"});
  t.conditions.push_back({Table::kPanIndex, "idx", std::nullopt});
  t.conditions.push_back({Table::kTokens, "tok_a", "v0"});
  t.writes.push_back({Table::kTokens, "tok_a", std::nullopt});
  int failed = -2;
  ASSERT_THAT(CommitOne(*store_, t, &failed), IsOk());
  EXPECT_EQ(failed, 2);
  EXPECT_THAT(store_->Get(Table::kTokens, "tok_a"),
              IsOkAndHolds(std::string("v1")));
  t.conditions.pop_back();
  ASSERT_THAT(CommitOne(*store_, t, &failed), IsOk());
  EXPECT_EQ(failed, -1);
  EXPECT_THAT(store_->Get(Table::kTokens, "tok_a"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_P(StoreConformanceTest, LaterTransactionsOfAGroupSeeEarlierAdmittedOnes) {
  std::vector<Transaction> group;
  group.push_back(Insert(Table::kTokens, "tok_a", "v1"));
  group.push_back(Insert(Table::kTokens, "tok_a", "v2"));  // taken by 0
  Transaction replace;
  replace.conditions.push_back({Table::kTokens, "tok_a", "v1"});
  replace.writes.push_back({Table::kTokens, "tok_a", "v3"});
  group.push_back(replace);
  Transaction remove;
  remove.conditions.push_back({Table::kTokens, "tok_a", "v3"});
  remove.writes.push_back({Table::kTokens, "tok_a", std::nullopt});
  group.push_back(remove);
  group.push_back(Insert(Table::kTokens, "tok_a", "v5"));  // free again
  PlaceholderRecords records;
  ASSERT_THAT(store_->CommitGroup(group, records), IsOk());
  EXPECT_THAT(records.failed(), ElementsAre(-1, 0, -1, -1, -1));
  EXPECT_THAT(store_->Get(Table::kTokens, "tok_a"),
              IsOkAndHolds(std::string("v5")));
}

TEST_P(StoreConformanceTest, ATransactionLeftOutIsNotSeenNorWritten) {
  std::vector<Transaction> group;
  group.push_back(Insert(Table::kTokens, "tok_a", "left out"));
  group.push_back(Insert(Table::kTokens, "tok_a", "admitted"));
  group.push_back(Insert(Table::kTokens, "tok_b", "admitted"));
  PlaceholderRecords records([](size_t i) { return i != 0; });
  ASSERT_THAT(store_->CommitGroup(group, records), IsOk());
  EXPECT_THAT(records.failed(), ElementsAre(-1, -1, -1));
  EXPECT_THAT(records.admitted(), ElementsAre(1, 2));
  EXPECT_THAT(store_->Get(Table::kTokens, "tok_a"),
              IsOkAndHolds(std::string("admitted")));
}

TEST_P(StoreConformanceTest, NothingIsWrittenWithoutAuditRecords) {
  PlaceholderRecords none([](size_t) { return false; });
  std::vector<Transaction> group;
  group.push_back(Put(Table::kTokens, "tok_a", "v"));
  ASSERT_THAT(store_->CommitGroup(group, none), IsOk());
  EXPECT_THAT(store_->Get(Table::kTokens, "tok_a"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->ChainHeadNow(),
              IsOkAndHolds(::testing::Field(&ChainHead::sequence, 0u)));
}

TEST_P(StoreConformanceTest, DeletesAndPutsOfAGroupLandTogether) {
  ASSERT_THAT(CommitOne(*store_, Put(Table::kTokens, "tok_a", "record-a")),
              IsOk());
  Transaction t;
  t.writes.push_back({Table::kTokens, "tok_a", std::nullopt});
  t.writes.push_back({Table::kPanIndex, "idx", "tok_b"});
  t.writes.push_back({Table::kIdempotency, "key", "first"});
  t.writes.push_back({Table::kIdempotency, "key", "second"});  // last wins
  ASSERT_THAT(CommitOne(*store_, t), IsOk());
  EXPECT_THAT(store_->Get(Table::kTokens, "tok_a"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->Get(Table::kPanIndex, "idx"),
              IsOkAndHolds(std::string("tok_b")));
  EXPECT_THAT(store_->Get(Table::kIdempotency, "key"),
              IsOkAndHolds(std::string("second")));
}

TEST_P(StoreConformanceTest, ScanWalksATableInKeyOrderInChunks) {
  Transaction t;
  for (const char* k : {"tok_c", "tok_a", "tok_b", "tok_d"}) {
    t.writes.push_back({Table::kTokens, k, std::string("r") + k});
  }
  t.writes.push_back({Table::kPanIndex, "idx", "other table"});
  ASSERT_THAT(CommitOne(*store_, t), IsOk());
  EXPECT_THAT(
      store_->Scan(Table::kTokens, "", 3),
      IsOkAndHolds(ElementsAre(Pair("tok_a", "rtok_a"), Pair("tok_b", "rtok_b"),
                               Pair("tok_c", "rtok_c"))));
  EXPECT_THAT(store_->Scan(Table::kTokens, "tok_c", 3),
              IsOkAndHolds(ElementsAre(Pair("tok_d", "rtok_d"))));
  EXPECT_THAT(store_->Scan(Table::kTokens, "tok_d", 3),
              IsOkAndHolds(IsEmpty()));
  // Byte order, not collation: 0xff sorts after 'z'.
  ASSERT_THAT(CommitOne(*store_, Put(Table::kTokens, "\xff", "high")), IsOk());
  ASSERT_THAT(CommitOne(*store_, Put(Table::kTokens, "Z", "upper")), IsOk());
  EXPECT_THAT(
      store_->Scan(Table::kTokens, "", 10),
      IsOkAndHolds(ElementsAre(Pair("Z", "upper"), Pair("tok_a", "rtok_a"),
                               Pair("tok_b", "rtok_b"), Pair("tok_c", "rtok_c"),
                               Pair("tok_d", "rtok_d"), Pair("\xff", "high"))));
}

TEST_P(StoreConformanceTest, CountersSumWithinAndAcrossCommitsAndReopen) {
  for (int i = 0; i < 3; ++i) {
    std::vector<Transaction> group(2);
    group[0].counter_adds.push_back({"dek/00000001", 1000});
    group[1].counter_adds.push_back({"dek/00000001", 1});
    group[1].counter_adds.push_back({"dek/00000002", 1});
    PlaceholderRecords records;
    ASSERT_THAT(store_->CommitGroup(group, records), IsOk());
  }
  Reopen();
  EXPECT_THAT(store_->KeyUses(),
              IsOkAndHolds(ElementsAre(Pair("dek/00000001", 3003u),
                                       Pair("dek/00000002", 3u))));
}

TEST_P(StoreConformanceTest, CountersAreReadByPrefix) {
  Transaction t = Put(Table::kTokens, "tok_a", "v");
  t.counter_adds = {{"dek/00000001", 3}, {"dek/00000001/new-records", 2},
                    {"dek/00000002", 1}, {"deks", 9},
                    {"velocity/x", 4},   {std::string("\xff\xff"), 5}};
  ASSERT_THAT(CommitOne(*store_, t), IsOk());
  EXPECT_THAT(store_->CountersWithPrefix("dek/"),
              IsOkAndHolds(ElementsAre(Pair("dek/00000001", 3u),
                                       Pair("dek/00000001/new-records", 2u),
                                       Pair("dek/00000002", 1u))));
  EXPECT_THAT(store_->CountersWithPrefix("dek/00000002"),
              IsOkAndHolds(ElementsAre(Pair("dek/00000002", 1u))));
  EXPECT_THAT(store_->CountersWithPrefix(std::string("\xff")),
              IsOkAndHolds(ElementsAre(Pair(std::string("\xff\xff"), 5u))));
  EXPECT_THAT(store_->CountersWithPrefix("none"), IsOkAndHolds(IsEmpty()));
  auto all = store_->KeyUses();
  ASSERT_THAT(all, IsOk());
  EXPECT_EQ(all->size(), 6u);
}

TEST_P(StoreConformanceTest, TheChainHeadMovesWithEveryCommit) {
  EXPECT_THAT(store_->ChainHeadNow(),
              IsOkAndHolds(::testing::Field(&ChainHead::sequence, 0u)));
  EXPECT_THAT(store_->LastAuditRecord(), IsOkAndHolds(std::nullopt));
  std::vector<Transaction> group(3);
  PlaceholderRecords records;
  ASSERT_THAT(store_->CommitGroup(group, records), IsOk());
  EXPECT_EQ(records.head().sequence, 0u);
  auto head = store_->ChainHeadNow();
  ASSERT_THAT(head, IsOk());
  EXPECT_EQ(head->sequence, 3u);
  EXPECT_EQ(head->mac.size(), 32u);
  PlaceholderRecords next;
  ASSERT_THAT(store_->CommitGroup(group, next), IsOk());
  EXPECT_EQ(next.head().sequence, 3u);
  EXPECT_EQ(next.head().mac, head->mac);
  Reopen();
  EXPECT_THAT(store_->ChainHeadNow(),
              IsOkAndHolds(::testing::Field(&ChainHead::sequence, 6u)));
  EXPECT_THAT(store_->LastAuditRecord(),
              IsOkAndHolds(std::optional(
                  std::pair<uint64_t, std::string>(6, "audit-6"))));
  std::vector<uint64_t> seen;
  ASSERT_THAT(store_->ScanAudit(2,
                                [&](uint64_t seq, absl::string_view record) {
                                  EXPECT_EQ(record,
                                            absl::StrCat("audit-", seq));
                                  seen.push_back(seq);
                                  return seq < 5;
                                }),
              IsOk());
  EXPECT_THAT(seen, ElementsAre(2, 3, 4, 5));
}

// Appends records at sequences the describer chooses.
class RecordsAt : public GroupDescriber {
 public:
  explicit RecordsAt(std::vector<uint64_t> sequences)
      : sequences_(std::move(sequences)) {}
  void Begin(const ChainHead&) override {}
  bool Admit(size_t, int failed) override { return failed < 0; }
  ChainAppend Finish() override {
    ChainAppend a;
    for (uint64_t s : sequences_)
      a.records.emplace_back(s, absl::StrCat("r", s));
    a.head_mac = std::string(32, 'm');
    return a;
  }

 private:
  std::vector<uint64_t> sequences_;
};

TEST_P(StoreConformanceTest, RecordsThatDoNotFollowTheHeadAreRefused) {
  std::vector<Transaction> group(1);
  group[0] = Put(Table::kTokens, "tok_a", "v");
  RecordsAt first({1, 2});
  ASSERT_THAT(store_->CommitGroup(group, first), IsOk());
  RecordsAt behind({2});  // a second writer that missed the head
  EXPECT_THAT(store_->CommitGroup(group, behind),
              StatusIs(absl::StatusCode::kInternal));
  // Sequences past 255 and 65535, so that byte order matters.
  RecordsAt far({300, 70000});
  ASSERT_THAT(store_->CommitGroup(group, far), IsOk());
  std::vector<uint64_t> seen;
  ASSERT_THAT(store_->ScanAudit(1,
                                [&](uint64_t seq, absl::string_view) {
                                  seen.push_back(seq);
                                  return true;
                                }),
              IsOk());
  EXPECT_THAT(seen, ElementsAre(1, 2, 300, 70000));
}

TEST_P(StoreConformanceTest, APurgeDeletesOldRecordsAndKeepsItsAnchor) {
  std::vector<Transaction> group(5);
  PlaceholderRecords records;
  ASSERT_THAT(store_->CommitGroup(group, records), IsOk());
  EXPECT_THAT(store_->AuditAnchor(), IsOkAndHolds(std::nullopt));
  PlaceholderRecords purge;
  purge.purge_through = 3;
  purge.anchor = "anchor-bytes";
  std::vector<Transaction> one(1);
  ASSERT_THAT(store_->CommitGroup(one, purge), IsOk());
  EXPECT_THAT(store_->AuditAnchor(),
              IsOkAndHolds(std::optional<std::string>("anchor-bytes")));
  std::vector<uint64_t> seen;
  ASSERT_THAT(store_->ScanAudit(1,
                                [&](uint64_t seq, absl::string_view) {
                                  seen.push_back(seq);
                                  return true;
                                }),
              IsOk());
  EXPECT_THAT(seen, ElementsAre(4, 5, 6));
}

TEST_P(StoreConformanceTest, KeysAreComparedAndSetAtomically) {
  ASSERT_THAT(store_->InsertKey("dek/1", "wrapped"), IsOk());
  EXPECT_THAT(store_->InsertKey("dek/1", "again"),
              StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(store_->ReplaceKey("dek/1", "other", "tombstone"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store_->ReplaceKey("dek/9", "", "tombstone"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  // A failed update changes nothing, not even its first step.
  EXPECT_THAT(store_->UpdateKeys({{.key_id = "dek/2",
                                   .expected = std::nullopt,
                                   .record = std::string("new")},
                                  {.key_id = "dek/1",
                                   .expected = std::string("stale"),
                                   .record = std::string("x")}}),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store_->GetKey("dek/2"), StatusIs(absl::StatusCode::kNotFound));
  // A fence: checked, not written.
  ASSERT_THAT(store_->UpdateKeys({{.key_id = "dek/1",
                                   .expected = std::string("wrapped"),
                                   .record = std::nullopt},
                                  {.key_id = "dek/2",
                                   .expected = std::nullopt,
                                   .record = std::string("new")}}),
              IsOk());
  ASSERT_THAT(store_->ReplaceKey("dek/1", "wrapped", "tombstone"), IsOk());
  Reopen();
  EXPECT_THAT(store_->ListKeys(),
              IsOkAndHolds(ElementsAre(Pair("dek/1", "tombstone"),
                                       Pair("dek/2", "new"))));
  EXPECT_THAT(store_->GetKey("dek/2"), IsOkAndHolds(std::string("new")));
}

TEST_P(StoreConformanceTest, CommittedDataSurvivesReopen) {
  ASSERT_THAT(CommitOne(*store_, Put(Table::kTokens, "tok_a", "record-a")),
              IsOk());
  Reopen();
  EXPECT_THAT(store_->Get(Table::kTokens, "tok_a"),
              IsOkAndHolds(std::string("record-a")));
}

// Concurrent writers, each with its own store instance where the store
// admits several (vault nodes), else sharing one: of 16 inserts of one key
// exactly one wins, and the chain has one record per admitted transaction.
TEST_P(StoreConformanceTest, OneOfManyConcurrentInsertsOfAKeyWins) {
  constexpr int kWriters = 16;
  std::vector<std::unique_ptr<Store>> others;
  for (int i = 0; i < kWriters && harness_->SharesData(); ++i) {
    auto s = harness_->Open();
    ASSERT_THAT(s, IsOk());
    others.push_back(*std::move(s));
  }
  std::atomic<int> won{0};
  std::atomic<int> lost{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kWriters; ++i) {
    threads.emplace_back([&, i] {
      const Store& store = others.empty() ? *store_ : *others[i];
      for (int round = 0; round < 20; ++round) {
        int failed = -2;
        Transaction t = Insert(Table::kTokens, absl::StrCat("tok_", round),
                               absl::StrCat("writer-", i));
        t.writes.push_back({Table::kPanIndex, absl::StrCat("idx_", round),
                            absl::StrCat("writer-", i)});
        absl::Status s = CommitOne(store, std::move(t), &failed);
        ASSERT_TRUE(s.ok()) << s;
        (failed < 0 ? won : lost)++;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(won.load(), 20);
  EXPECT_EQ(lost.load(), 20 * (kWriters - 1));
  for (int round = 0; round < 20; ++round) {
    auto token = store_->Get(Table::kTokens, absl::StrCat("tok_", round));
    ASSERT_THAT(token, IsOk());
    // Both writes of the winner, none of a loser.
    EXPECT_THAT(store_->Get(Table::kPanIndex, absl::StrCat("idx_", round)),
                IsOkAndHolds(*token));
  }
  uint64_t records = 0;
  uint64_t expected = 1;
  ASSERT_THAT(store_->ScanAudit(1,
                                [&](uint64_t seq, absl::string_view) {
                                  EXPECT_EQ(seq, expected++);
                                  ++records;
                                  return true;
                                }),
              IsOk());
  EXPECT_EQ(records, 20u);
}

// Admits every transaction whose conditions hold and describes none.
class AdmitsWithoutRecords final : public GroupDescriber {
 public:
  void Begin(const ChainHead&) override {}
  bool Admit(size_t, int failed_condition) override {
    return failed_condition < 0;
  }
  ChainAppend Finish() override { return {}; }
};

TEST_P(StoreConformanceTest, SharedStateIsComparedAndSetWithoutRecords) {
  ASSERT_THAT(CommitUnaudited(*store_, Insert(Table::kShared, "lease/x", "a")),
              IsOk());
  EXPECT_THAT(CommitUnaudited(*store_, Insert(Table::kShared, "lease/x", "b")),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  Transaction swap;
  swap.conditions.push_back({Table::kShared, "lease/x", std::string("a")});
  swap.writes.push_back({Table::kShared, "lease/x", std::string("c")});
  ASSERT_THAT(CommitUnaudited(*store_, swap), IsOk());
  EXPECT_THAT(CommitUnaudited(*store_, swap),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store_->Get(Table::kShared, "lease/x"),
              IsOkAndHolds(std::string("c")));
  // A condition on token data may fence a coordination write.
  Transaction fenced;
  fenced.conditions.push_back({Table::kTokens, "tok_a", std::nullopt});
  fenced.writes.push_back({Table::kShared, "lease/y", std::string("d")});
  ASSERT_THAT(CommitOne(*store_, Put(Table::kTokens, "tok_a", "v")), IsOk());
  EXPECT_THAT(CommitUnaudited(*store_, fenced),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store_->Get(Table::kShared, "lease/y"),
              StatusIs(absl::StatusCode::kNotFound));
  // The chain holds the token's record only.
  EXPECT_THAT(store_->ChainHeadNow(),
              IsOkAndHolds(::testing::Field(&ChainHead::sequence, 1u)));
  Reopen();
  EXPECT_THAT(store_->Get(Table::kShared, "lease/x"),
              IsOkAndHolds(std::string("c")));
}

TEST_P(StoreConformanceTest, TokenDataIsNeverWrittenWithoutRecords) {
  EXPECT_THAT(CommitUnaudited(*store_, Insert(Table::kTokens, "tok_a", "v")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  Transaction counted = Insert(Table::kShared, "s", "v");
  counted.counter_adds.push_back({"uses", 1});
  EXPECT_THAT(CommitUnaudited(*store_, counted),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // A describer that admits token data but describes none is refused by
  // the store itself.
  AdmitsWithoutRecords silent;
  std::vector<Transaction> group;
  group.push_back(Insert(Table::kShared, "s", "v"));
  group.push_back(Insert(Table::kTokens, "tok_a", "v"));
  EXPECT_THAT(store_->CommitGroup(group, silent),
              StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT(store_->Get(Table::kTokens, "tok_a"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->Get(Table::kShared, "s"),
              StatusIs(absl::StatusCode::kNotFound));
  auto uses = store_->KeyUses();
  ASSERT_THAT(uses, IsOk());
  EXPECT_THAT(*uses, IsEmpty());
}

TEST_P(StoreConformanceTest, ConcurrentCompareAndSetLosesNoUpdate) {
  constexpr int kWriters = 8;
  constexpr int kIncrements = 25;
  std::vector<std::unique_ptr<Store>> others;
  for (int i = 0; i < kWriters && harness_->SharesData(); ++i) {
    auto s = harness_->Open();
    ASSERT_THAT(s, IsOk());
    others.push_back(*std::move(s));
  }
  std::atomic<int> conflicts{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kWriters; ++i) {
    threads.emplace_back([&, i] {
      const Store& store = others.empty() ? *store_ : *others[i];
      for (int done = 0; done < kIncrements;) {
        absl::StatusOr<std::string> now = store.Get(Table::kShared, "n");
        std::optional<std::string> expected;
        int n = 0;
        if (now.ok()) {
          expected = *now;
          n = std::stoi(*now);
        } else {
          ASSERT_THAT(now.status(), StatusIs(absl::StatusCode::kNotFound));
        }
        Transaction t;
        t.conditions.push_back({Table::kShared, "n", expected});
        t.writes.push_back({Table::kShared, "n", std::to_string(n + 1)});
        absl::Status s = CommitUnaudited(store, t);
        if (absl::IsFailedPrecondition(s)) {
          ++conflicts;
          continue;
        }
        ASSERT_THAT(s, IsOk());
        ++done;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_THAT(store_->Get(Table::kShared, "n"),
              IsOkAndHolds(std::to_string(kWriters * kIncrements)));
  EXPECT_GT(conflicts.load(), 0);  // the writers did race
}

std::vector<StoreKind> Kinds() {
  std::vector<StoreKind> kinds;
  kinds.push_back(
      {"RocksDb", [] { return std::make_unique<RocksDbHarness>(); }});
  kinds.push_back(
      {"Postgres", [] { return std::make_unique<PostgresHarness>(); }});
  return kinds;
}

INSTANTIATE_TEST_SUITE_P(Stores, StoreConformanceTest,
                         ::testing::ValuesIn(Kinds()),
                         [](const ::testing::TestParamInfo<StoreKind>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace cardvault::storage
