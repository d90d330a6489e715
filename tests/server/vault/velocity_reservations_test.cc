// Daily velocity limits shared by two vault nodes over one store (two
// Vaults, each with its own limiter, write path and reservations, as two
// cardvaultd processes on one database): together they admit the limit,
// never more; a store failure while reserving refuses the call; past days'
// reservation rows are purged, on RocksDB and PostgreSQL.
#include "server/vault/velocity_reservations.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/coordination/use_reservations.h"
#include "server/storage/postgres_schema.h"
#include "server/storage/postgres_store.h"
#include "tests/server/vault/vault_fixture.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::vault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::IsOkAndHolds;
using ::cardvault::testing::StatusIs;

// A store that answers UNAVAILABLE for the shared table's reads (or for
// every commit) on command: the reservations' view of a database gone away.
class FailingSharedStore : public storage::Store {
 public:
  explicit FailingSharedStore(const storage::Store* store) : store_(store) {}
  std::atomic<bool> fail_reads{false};
  std::atomic<bool> fail_commits{false};

  absl::StatusOr<std::string> Get(storage::Table table,
                                  absl::string_view key) const override {
    if (fail_reads && table == storage::Table::kShared) {
      return absl::UnavailableError("injected: shared table unreadable");
    }
    return store_->Get(table, key);
  }
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Scan(
      storage::Table table, absl::string_view start_after,
      size_t limit) const override {
    return store_->Scan(table, start_after, limit);
  }
  absl::StatusOr<std::string> GetKey(absl::string_view id) const override {
    return store_->GetKey(id);
  }
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ListKeys()
      const override {
    return store_->ListKeys();
  }
  absl::Status UpdateKeys(
      const std::vector<storage::KeyUpdate>& updates) const override {
    return store_->UpdateKeys(updates);
  }
  absl::StatusOr<std::map<std::string, uint64_t>> CountersWithPrefix(
      absl::string_view prefix) const override {
    return store_->CountersWithPrefix(prefix);
  }
  absl::StatusOr<std::optional<std::pair<uint64_t, std::string>>>
  LastAuditRecord() const override {
    return store_->LastAuditRecord();
  }
  absl::StatusOr<std::optional<std::string>> AuditAnchor() const override {
    return store_->AuditAnchor();
  }
  absl::Status ScanAudit(uint64_t from,
                         const std::function<bool(uint64_t, absl::string_view)>&
                             visit) const override {
    return store_->ScanAudit(from, visit);
  }
  absl::Status CommitGroup(absl::Span<const storage::Transaction> group,
                           storage::GroupDescriber& describer) const override {
    if (fail_commits) return absl::UnavailableError("injected: commit failed");
    return store_->CommitGroup(group, describer);
  }
  absl::StatusOr<storage::ChainHead> ChainHeadNow() const override {
    return store_->ChainHeadNow();
  }

 private:
  const storage::Store* const store_;
};

int64_t DayOf(absl::Time t) { return absl::ToUnixSeconds(t) / 86400; }

// Sets (or, with nullopt, deletes) `key` of the shared table.
absl::Status WriteShared(const storage::Store& store, const std::string& key,
                         std::optional<std::string> value) {
  storage::Transaction t;
  t.writes.push_back({storage::Table::kShared, key, std::move(value)});
  return storage::CommitUnaudited(store, t);
}

class TwoNodeVelocityTest : public VaultTest {
 protected:
  void SetUp() override {
    VaultTest::SetUp();
    failing_ = std::make_unique<FailingSharedStore>(db_.get());
    uses_a_ = *coordination::UseReservations::Create(failing_.get(), {});
    uses_b_ = *coordination::UseReservations::Create(db_.get(), {});
    commit::WritePath::Options b;
    b.node = "node-b";
    audit_b_ = *commit::WritePath::Open(
        store_.get(), store_.get(),
        *crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'a'))),
        1, std::move(b));
    SetDailyLimit(100);  // blocks of 3
    StartA();
    StartB();
    token_ = vault_->Tokenize(kPos, MakeCard("4111111111111111"))->token;
  }
  void TearDown() override {
    vault_.reset();
    vault_b_.reset();
    audit_b_.reset();
    uses_a_.reset();
    uses_b_.reset();
    VaultTest::TearDown();
  }
  void SetDailyLimit(uint32_t per_day) {
    spec_.bindings[1].detokenize_limit = {.per_second = 0, .per_day = per_day};
    ApplyPolicy();
  }
  Vault::Options Clocked() {
    Vault::Options options;
    options.now = [this] { return Now(); };
    return options;
  }
  // Node A: the fixture's vault and write path, reserving through failing_.
  void StartA() {
    Vault::Dependencies deps = Deps();
    deps.day_reservations = uses_a_.get();
    vault_ = *Vault::Create(deps, Clocked());
  }
  // Node B: its own write path and reservations.
  void StartB() {
    Vault::Dependencies deps = Deps();
    deps.audit = audit_b_.get();
    deps.day_reservations = uses_b_.get();
    vault_b_ = *Vault::Create(deps, Clocked());
  }
  absl::Status Call(const Vault& node) {
    return node.Detokenize(kProcessor, token_, "authorization").status();
  }
  std::string Counter() {
    return VelocityReservationCounter(*index_key_, DayOf(Now()),
                                      kProcessor.identity);
  }
  // The durable count of the processor's calls today (all nodes).
  uint64_t DurableCount() {
    auto uses = db_->KeyUses();
    EXPECT_THAT(uses, IsOk());
    auto it = uses->find(auth::DayCounterId(DayOf(Now()), kProcessor.identity));
    return it == uses->end() ? 0 : it->second;
  }

  std::unique_ptr<FailingSharedStore> failing_;
  std::unique_ptr<coordination::UseReservations> uses_a_, uses_b_;
  std::unique_ptr<commit::WritePath> audit_b_;
  std::unique_ptr<Vault> vault_b_;
  std::string token_;
};

TEST_F(TwoNodeVelocityTest, AlternatingCallsAdmitExactlyTheLimitNotTwice) {
  int admitted = 0;
  for (int i = 0; i < 250; ++i) {
    const absl::Status s = Call(i % 2 == 0 ? *vault_ : *vault_b_);
    if (s.ok()) {
      ++admitted;
    } else {
      ASSERT_THAT(s, StatusIs(absl::StatusCode::kResourceExhausted)) << i;
    }
  }
  EXPECT_EQ(admitted, 100);
  EXPECT_GT(vault_->velocity_denials(), 0u);
  EXPECT_GT(vault_b_->velocity_denials(), 0u);
  EXPECT_THAT(uses_b_->Reserved(Counter()), IsOkAndHolds(100u));
  EXPECT_EQ(DurableCount(), 100u);
  // One chain holds both nodes' records.
  auto report = vault_b_->VerifyAuditChain(kAuditor);
  ASSERT_THAT(report, IsOk());
  EXPECT_TRUE(report->intact) << report->problem;
  // The next UTC day starts afresh on both.
  Advance(absl::Hours(24));
  EXPECT_THAT(Call(*vault_), IsOk());
  EXPECT_THAT(Call(*vault_b_), IsOk());
}

TEST_F(TwoNodeVelocityTest, ConcurrentCallersOnBothNodesGetExactlyTheLimit) {
  SetDailyLimit(120);  // blocks of 3
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      const Vault& node = t % 2 == 0 ? *vault_ : *vault_b_;
      for (;;) {
        const absl::Status s = Call(node);
        if (absl::IsResourceExhausted(s)) return;
        ASSERT_THAT(s, IsOk());
        ++admitted;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  // Every caller went on until refused, so neither node kept a use back.
  EXPECT_EQ(admitted.load(), 120);
  EXPECT_EQ(DurableCount(), 120u);
}

TEST_F(TwoNodeVelocityTest, ANodeIsRefusedEarlyByAtMostTheOthersBlock) {
  SetDailyLimit(200);                    // blocks of 6
  ASSERT_THAT(Call(*vault_b_), IsOk());  // b holds 5 unused
  int admitted = 1;
  while (Call(*vault_).ok()) ++admitted;
  EXPECT_EQ(admitted, 200 - 5);
  EXPECT_GE(admitted, 200 - static_cast<int>(auth::DayBlock(200)));
  // b's uses are b's: together exactly the limit.
  while (Call(*vault_b_).ok()) ++admitted;
  EXPECT_EQ(admitted, 200);
  EXPECT_THAT(Call(*vault_), StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST_F(TwoNodeVelocityTest, ARestartedNodeLosesItsUnusedBlockNeverReusesIt) {
  ASSERT_THAT(Call(*vault_), IsOk());  // a holds 2 of its block of 3
  StartA();                            // as after kill -9 and a start
  vault_->ResumeVelocityCounts(*db_->KeyUses());
  int admitted = 1;
  for (int i = 0; i < 200; ++i)
    admitted += Call(i % 2 ? *vault_ : *vault_b_).ok();
  EXPECT_EQ(admitted, 100 - 2);
  EXPECT_THAT(uses_b_->Reserved(Counter()), IsOkAndHolds(100u));
}

TEST_F(TwoNodeVelocityTest,
       AStoreFailureWhileReservingFailsClosedAndIsRecorded) {
  for (std::atomic<bool>* fault :
       {&failing_->fail_reads, &failing_->fail_commits}) {
    *fault = true;
    const uint64_t before = DurableCount();
    EXPECT_THAT(Call(*vault_), StatusIs(absl::StatusCode::kUnavailable));
    const audit::AuditEvent last = Events().back();
    EXPECT_EQ(last.event_type(), v1::DETOKENIZE);
    EXPECT_EQ(last.status_code(),
              static_cast<int>(absl::StatusCode::kUnavailable));
    EXPECT_EQ(DurableCount(), before);  // not counted
    EXPECT_EQ(vault_->velocity_denials(), 0u);
    *fault = false;
  }
  // Node b, on a store that answers, was never affected; nor is a once the
  // store answers again.
  EXPECT_THAT(Call(*vault_b_), IsOk());
  EXPECT_THAT(Call(*vault_), IsOk());
}

TEST_F(TwoNodeVelocityTest, AMalformedReservationRowFailsClosed) {
  ASSERT_THAT(WriteShared(*db_, coordination::ReservationKey(Counter()),
                          std::string("\x01")),
              IsOk());
  EXPECT_THAT(Call(*vault_), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(Call(*vault_b_), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(DurableCount(), 0u);
}

TEST_F(TwoNodeVelocityTest, ReservationRowsHoldNoIdentityNorCardData) {
  ASSERT_THAT(Call(*vault_), IsOk());
  auto rows = db_->Scan(storage::Table::kShared, "", 100);
  ASSERT_THAT(rows, IsOk());
  ASSERT_EQ(rows->size(), 1u);
  const auto& [key, value] = (*rows)[0];
  EXPECT_EQ(key, coordination::ReservationKey(Counter()));
  EXPECT_EQ(value.size(), coordination::kReservationBytes);
  for (const std::string& needle :
       {kProcessor.identity, std::string("processor"),
        std::string("4111111111111111"),
        absl::BytesToHexString("4111111111111111"), token_}) {
    EXPECT_FALSE(absl::StrContains(key, needle)) << needle;
    EXPECT_FALSE(absl::StrContains(value, needle)) << needle;
  }
}

TEST(VelocityReservationCounterTest, NamesADayAndAKeyedDigestOnly) {
  auto key =
      *crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'i')));
  auto other =
      *crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'j')));
  const std::string longest = "spiffe://t/" + std::string(244, 'x');
  const std::string c = VelocityReservationCounter(*key, 20417, longest);
  EXPECT_TRUE(absl::StartsWith(c, "velocity/20417/")) << c;
  EXPECT_EQ(c.size(), 15u + 2 * kVelocityDigestBytes);
  EXPECT_LE(c.size(), coordination::kMaxCounterNameBytes);
  EXPECT_FALSE(absl::StrContains(c, "spiffe"));
  // The same on every node (one key), distinct per identity, day and key.
  EXPECT_EQ(VelocityReservationCounter(*key, 20417, longest), c);
  EXPECT_NE(VelocityReservationCounter(*key, 20417, longest + "y"), c);
  EXPECT_NE(VelocityReservationCounter(*key, 20418, longest), c);
  EXPECT_NE(VelocityReservationCounter(*other, 20417, longest), c);
  // Within the bound for every day an int64 holds.
  EXPECT_LE(VelocityReservationCounter(*key, INT64_MIN, longest).size(),
            coordination::kMaxCounterNameBytes);
}

// Reservations of 3 identities on each of days today-4 .. today, a row of
// another counter and a lease row; purged in batches of `batch`.
void PurgeKeepsTodayAndYesterday(const storage::Store& store, size_t batch) {
  auto key =
      *crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'i')));
  auto uses = *coordination::UseReservations::Create(&store, {});
  const absl::Time now = absl::FromCivil(
      absl::CivilSecond(2026, 11, 25, 0, 30, 0), absl::UTCTimeZone());
  const int64_t today = DayOf(now);
  for (int64_t day = today - 4; day <= today; ++day) {
    for (const char* who : {"a", "b", "c"}) {
      ASSERT_THAT(
          uses->Reserve(VelocityReservationCounter(*key, day, who), 1, 5, 100),
          IsOk());
    }
  }
  ASSERT_THAT(uses->Reserve("dek/00000001", 1, 5, 100), IsOk());
  const storage::Condition fence{storage::Table::kShared, "fence/test",
                                 std::nullopt};
  // A lost lease deletes nothing.
  ASSERT_THAT(WriteShared(store, "fence/test", "x"), IsOk());
  EXPECT_THAT(PurgeVelocityReservations(store, store, now, fence, batch),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_THAT(WriteShared(store, "fence/test", std::nullopt), IsOk());
  EXPECT_THAT(PurgeVelocityReservations(store, store, now, fence, batch),
              IsOkAndHolds(9u));  // days today-4 .. today-2
  EXPECT_THAT(PurgeVelocityReservations(store, store, now, fence, batch),
              IsOkAndHolds(0u));
  for (int64_t day = today - 4; day <= today; ++day) {
    for (const char* who : {"a", "b", "c"}) {
      const absl::StatusOr<std::string> row =
          store.Get(storage::Table::kShared,
                    coordination::ReservationKey(
                        VelocityReservationCounter(*key, day, who)));
      if (day >= today - 1) {
        EXPECT_THAT(row, IsOk()) << day;
      } else {
        EXPECT_THAT(row, StatusIs(absl::StatusCode::kNotFound)) << day;
      }
    }
  }
  EXPECT_THAT(uses->Reserved("dek/00000001"), IsOkAndHolds(5u));
  // A purged day's count is not resumable: a node whose clock still shows
  // it would start from 0, which is why yesterday is kept.
  EXPECT_THAT(uses->Reserved(VelocityReservationCounter(*key, today - 2, "a")),
              IsOkAndHolds(0u));
}

TEST_F(VaultTest, PurgeDeletesReservationsOfDaysBeforeYesterdayOnRocksDb) {
  PurgeKeepsTodayAndYesterday(*db_, 4);
}

TEST(VelocityPurgePostgresTest, DeletesReservationsOfDaysBeforeYesterday) {
  auto server = testing::PostgresServer::Start({});
  ASSERT_THAT(server, IsOk());
  ASSERT_THAT(storage::MigratePostgres((*server)->conninfo()), IsOk());
  auto store = storage::PostgresStore::Open(
      {.conninfo = (*server)->conninfo(), .pool_size = 2});
  ASSERT_THAT(store, IsOk());
  PurgeKeepsTodayAndYesterday(**store, 4);
}

}  // namespace
}  // namespace cardvault::vault
