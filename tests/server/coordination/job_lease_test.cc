// The background-work lease over a real RocksDB store: one holder at a time,
// taken over once a claim expires, fenced writes of a stale holder refused,
// changes of holder audited and renewals not.
#include "server/coordination/job_lease.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/rocksdb_storage.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::coordination {
namespace {

namespace v1 = ::cardvault::v1;
using ::cardvault::testing::IsOk;
using ::cardvault::testing::IsOkAndHolds;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::SizeIs;

class FakeClock {
 public:
  absl::Time Now() {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ = absl::FromUnixSeconds(1764000000);
};

class JobLeaseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        (std::filesystem::temp_directory_path() /
         absl::StrCat(
             "cardvault-lease-", getpid(), "-",
             ::testing::UnitTest::GetInstance()->current_test_info()->name()))
            .string();
    std::filesystem::remove_all(dir_);
    db_ = *storage::RocksDbStorage::Open({.data_dir = dir_});
    auto key =
        crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'k')));
    ASSERT_THAT(key, IsOk());
    auto log =
        commit::WritePath::Open(db_.get(), db_.get(), *std::move(key), 1, {});
    ASSERT_THAT(log, IsOk());
    log_ = *std::move(log);
  }
  void TearDown() override {
    log_.reset();
    db_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<JobLease> Lease(const std::string& holder) {
    auto lease = JobLease::Create(db_.get(), log_.get(),
                                  {.holder = holder,
                                   .ttl = absl::Seconds(15),
                                   .max_clock_skew = absl::Seconds(2),
                                   .keep_renewing = false,
                                   .now = [this] { return clock_.Now(); }});
    EXPECT_THAT(lease, IsOk());
    return lease.ok() ? *std::move(lease) : nullptr;
  }
  std::vector<v1::AuditEvent> LeaseEvents() {
    std::vector<v1::AuditEvent> out;
    EXPECT_THAT(log_->Scan(1,
                           [&](const v1::AuditEvent& e) {
                             if (e.event_type() == v1::LEASE) out.push_back(e);
                             return true;
                           }),
                IsOk());
    return out;
  }

  FakeClock clock_;
  std::string dir_;
  std::unique_ptr<storage::RocksDbStorage> db_;
  std::unique_ptr<commit::WritePath> log_;
};

TEST_F(JobLeaseTest, OneNodeHoldsItAndAnotherTakesItOnceItExpires) {
  auto a = Lease("node-a");
  auto b = Lease("node-b");
  EXPECT_THAT(a->Step(), IsOkAndHolds(true));
  EXPECT_THAT(b->Step(), IsOkAndHolds(false));
  EXPECT_TRUE(a->held());
  EXPECT_FALSE(b->held());
  const uint64_t first = a->fence();
  EXPECT_GT(first, 0u);

  // Renewed in time, a keeps it with the same fence.
  for (int i = 0; i < 5; ++i) {
    clock_.Advance(absl::Seconds(5));
    EXPECT_THAT(a->Step(), IsOkAndHolds(true));
    EXPECT_THAT(b->Step(), IsOkAndHolds(false));
  }
  EXPECT_EQ(a->fence(), first);

  // a dies: its claim expires, and b takes the lease only past the skew.
  clock_.Advance(absl::Seconds(15));
  EXPECT_FALSE(a->held());
  EXPECT_THAT(b->Step(), IsOkAndHolds(false));
  clock_.Advance(absl::Seconds(2));
  EXPECT_THAT(b->Step(), IsOkAndHolds(true));
  EXPECT_EQ(b->fence(), first + 1);
  EXPECT_THAT(a->Step(), IsOkAndHolds(false));
  EXPECT_FALSE(a->held());

  // Two changes of holder are in the trail; the renewals are not.
  const std::vector<v1::AuditEvent> events = LeaseEvents();
  ASSERT_THAT(events, SizeIs(2));
  EXPECT_THAT(events[0].detail(), HasSubstr("taken by node-a, fence 1"));
  EXPECT_THAT(events[1].detail(), HasSubstr("taken by node-b, fence 2"));
  EXPECT_THAT(events[1].detail(), HasSubstr("previous holder node-a"));
}

TEST_F(JobLeaseTest, ARestartedNodeTakesItsOwnClaimBackAtOnce) {
  auto before = Lease("node-a");
  ASSERT_THAT(before->Step(), IsOkAndHolds(true));
  const std::optional<storage::Condition> old_fence = before->Fence();
  before.reset();  // killed: its claim is left to expire
  auto other = Lease("node-b");
  EXPECT_THAT(other->Step(), IsOkAndHolds(false));
  auto after = Lease("node-a");
  EXPECT_THAT(after->Step(), IsOkAndHolds(true));
  EXPECT_EQ(after->fence(), 2u);  // a new fence: the old process is fenced
  storage::Transaction stale;
  stale.conditions.push_back(*old_fence);
  stale.writes.push_back({storage::Table::kShared, "job/x", "stale"});
  EXPECT_THAT(storage::CommitUnaudited(*db_, stale),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(JobLeaseTest, TwoLiveNodesWithOneNameDoNotTakeTheLeaseFromEachOther) {
  auto twin = Lease("node-a");
  ASSERT_THAT(twin->Step(), IsOkAndHolds(true));
  // A misconfigured second node of the same name takes it once, at its
  // start (it cannot tell itself from a restart)...
  auto a = Lease("node-a");
  ASSERT_THAT(a->Step(), IsOkAndHolds(true));
  // ...and from then on the two do not take it from each other.
  for (int i = 0; i < 5; ++i) {
    clock_.Advance(absl::Seconds(5));
    EXPECT_THAT(twin->Step(), IsOkAndHolds(false));
    EXPECT_THAT(a->Step(), IsOkAndHolds(true));
  }
  EXPECT_FALSE(twin->held());
  EXPECT_THAT(LeaseEvents(), SizeIs(2));
}

TEST_F(JobLeaseTest, AHolderTrustsItsClaimOnlyUntilTheSkewMargin) {
  auto a = Lease("node-a");
  ASSERT_THAT(a->Step(), IsOkAndHolds(true));
  clock_.Advance(absl::Seconds(12));
  EXPECT_TRUE(a->held());
  EXPECT_TRUE(a->Fence().has_value());
  clock_.Advance(absl::Seconds(1));  // 13 s = ttl - skew
  EXPECT_FALSE(a->held());
  EXPECT_FALSE(a->Fence().has_value());
}

TEST_F(JobLeaseTest, AStaleHoldersFencedWriteIsRefused) {
  auto a = Lease("node-a");
  auto b = Lease("node-b");
  ASSERT_THAT(a->Step(), IsOkAndHolds(true));
  const std::optional<storage::Condition> stale = a->Fence();
  ASSERT_TRUE(stale.has_value());

  storage::Transaction work;
  work.conditions.push_back(*stale);
  work.writes.push_back({storage::Table::kShared, "job/progress", "a"});
  ASSERT_THAT(storage::CommitUnaudited(*db_, work), IsOk());

  // a stalls past its lease; b takes over.
  clock_.Advance(absl::Seconds(20));
  ASSERT_THAT(b->Step(), IsOkAndHolds(true));
  work.writes[0].value = "stale";
  EXPECT_THAT(storage::CommitUnaudited(*db_, work),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  // Audited work is fenced the same way.
  v1::AuditEvent event = audit::ServerEvent(v1::AUDIT_PURGE, clock_.Now());
  int failed = -1;
  EXPECT_THAT(log_->Append(event, work, &failed),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_EQ(failed, 0);
  EXPECT_THAT(db_->Get(storage::Table::kShared, "job/progress"),
              IsOkAndHolds(std::string("a")));
  work.conditions[0] = *b->Fence();
  EXPECT_THAT(storage::CommitUnaudited(*db_, work), IsOk());
}

TEST_F(JobLeaseTest, OneOfManyConcurrentTakersWins) {
  constexpr int kNodes = 8;
  std::vector<std::unique_ptr<JobLease>> leases;
  for (int i = 0; i < kNodes; ++i) {
    leases.push_back(Lease(absl::StrCat("node-", i)));
  }
  std::atomic<int> won{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kNodes; ++i) {
    threads.emplace_back([&, i] {
      absl::StatusOr<bool> held = leases[i]->Step();
      ASSERT_THAT(held, IsOk());
      won += *held;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(won.load(), 1);
  int held = 0;
  for (const auto& l : leases) held += l->held();
  EXPECT_EQ(held, 1);
  EXPECT_THAT(LeaseEvents(), SizeIs(1));
}

TEST_F(JobLeaseTest, AMalformedClaimIsDataLossAndNotHeld) {
  ASSERT_THAT(
      storage::CommitUnaudited(*db_, {.conditions = {},
                                      .writes = {{storage::Table::kShared,
                                                  LeaseClaimKey("background"),
                                                  std::string("\x01garbage")}},
                                      .counter_adds = {}}),
      IsOk());
  auto a = Lease("node-a");
  EXPECT_THAT(a->Step(), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_FALSE(a->held());
}

TEST_F(JobLeaseTest, AClaimWithAnExpiryFarAheadStopsNothingPastTheTtl) {
  // Written by hand (or by a node whose clock is a year ahead): fence 1,
  // expiring in a year.
  const LeaseClaim forever{.fence = 1,
                           .expires = clock_.Now() + absl::Hours(24 * 365),
                           .holder = "node-x"};
  ASSERT_THAT(
      storage::CommitUnaudited(
          *db_,
          {.conditions = {},
           .writes = {{storage::Table::kShared, LeaseClaimKey("background"),
                       EncodeLeaseClaim(forever)},
                      {storage::Table::kShared, LeaseFenceKey("background"),
                       std::string("\0\0\0\0\0\0\0\x01", 8)}},
           .counter_adds = {}}),
      IsOk());
  auto a = Lease("node-a");
  EXPECT_THAT(a->Step(), IsOkAndHolds(false));
  clock_.Advance(absl::Seconds(16));
  EXPECT_THAT(a->Step(), IsOkAndHolds(false));
  // Unchanged for ttl + skew since node-a first read it: dead.
  clock_.Advance(absl::Seconds(1));
  EXPECT_THAT(a->Step(), IsOkAndHolds(true));
  EXPECT_EQ(a->fence(), 2u);
}

TEST_F(JobLeaseTest, AClaimThatKeepsChangingIsNotTakenBeforeItExpires) {
  auto a = Lease("node-a");
  auto b = Lease("node-b");
  ASSERT_THAT(a->Step(), IsOkAndHolds(true));
  // b watches a renew for far longer than a ttl: a live holder keeps it.
  for (int i = 0; i < 12; ++i) {
    clock_.Advance(absl::Seconds(5));
    ASSERT_THAT(a->Step(), IsOkAndHolds(true));
    EXPECT_THAT(b->Step(), IsOkAndHolds(false)) << i;
  }
}

TEST_F(JobLeaseTest, AHolderNameThatCouldBeACardNumberIsRefused) {
  for (const std::string& holder : {std::string("4111111111111111"),
                                    std::string("n-4111 1111 1111 1111")}) {
    const std::string bytes = EncodeLeaseClaim(
        {.fence = 1, .expires = clock_.Now(), .holder = holder});
    EXPECT_THAT(DecodeLeaseClaim(bytes), StatusIs(absl::StatusCode::kDataLoss))
        << holder;
  }
}

TEST_F(JobLeaseTest, ClaimsRoundTripAndBadBytesAreRefused) {
  const LeaseClaim claim{.fence = 7,
                         .expires = absl::FromUnixMillis(1764000000123),
                         .holder = "node-a"};
  const std::string bytes = EncodeLeaseClaim(claim);
  ASSERT_EQ(bytes.size(), 18u + 6u);
  EXPECT_EQ(bytes[0], '\x01');
  auto back = DecodeLeaseClaim(bytes);
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(back->fence, 7u);
  EXPECT_EQ(back->expires, claim.expires);
  EXPECT_EQ(back->holder, "node-a");
  EXPECT_THAT(DecodeLeaseClaim(bytes.substr(0, bytes.size() - 1)),
              StatusIs(absl::StatusCode::kDataLoss));
  std::string wrong_version = bytes;
  wrong_version[0] = '\x02';
  EXPECT_THAT(DecodeLeaseClaim(wrong_version),
              StatusIs(absl::StatusCode::kDataLoss));
}

TEST_F(JobLeaseTest, CreateRefusesBadNamesAndTimes) {
  auto with = [&](JobLease::Options o) {
    o.keep_renewing = false;
    return JobLease::Create(db_.get(), log_.get(), std::move(o)).status();
  };
  EXPECT_THAT(with({.holder = ""}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(with({.holder = "node a"}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(with({.holder = std::string(65, 'n')}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(with({.name = "", .holder = "node-a"}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(with({.holder = "node-a",
                    .ttl = absl::Seconds(5),
                    .max_clock_skew = absl::Seconds(2)}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(with({.holder = "node-a"}), IsOk());
}

TEST_F(JobLeaseTest, TheRenewerThreadTakesTheLeaseByItself) {
  auto lease = JobLease::Create(db_.get(), log_.get(),
                                {.holder = "node-a",
                                 .ttl = absl::Seconds(3),
                                 .max_clock_skew = absl::Milliseconds(100)});
  ASSERT_THAT(lease, IsOk());
  for (int i = 0; i < 100 && !(*lease)->held(); ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE((*lease)->held());
}

}  // namespace
}  // namespace cardvault::coordination
