// Background work runs only on the node holding the lease, with its fence,
// and resumes on another node once the lease moves.
#include "server/coordination/background_work.h"

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/rocksdb_storage.h"
#include "tests/testing/eventually.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::coordination {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::IsOkAndHolds;
using ::cardvault::testing::StatusIs;

class BackgroundWorkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        (std::filesystem::temp_directory_path() /
         absl::StrCat(
             "cardvault-background-", getpid(), "-",
             ::testing::UnitTest::GetInstance()->current_test_info()->name()))
            .string();
    std::filesystem::remove_all(dir_);
    db_ = *storage::RocksDbStorage::Open({.data_dir = dir_});
    log_ = *commit::WritePath::Open(
        db_.get(), db_.get(),
        *crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'k'))),
        1, {});
  }
  void TearDown() override {
    log_.reset();
    db_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<JobLease> Lease(const std::string& holder) {
    return *JobLease::Create(
        db_.get(), log_.get(),
        {.holder = holder, .keep_renewing = false, .now = [this] {
           absl::MutexLock lock(&mu_);
           return now_;
         }});
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }
  // A job that records the node it ran on and the fence it was given.
  BackgroundJob Recording(const std::string& node) {
    return {.name = "test-job",
            .interval = absl::Milliseconds(20),
            .run =
                [this, node](const storage::Condition& fence) {
                  absl::MutexLock lock(&mu_);
                  ran_.push_back({node, *fence.expected});
                  return absl::OkStatus();
                },
            .cancel = nullptr};
  }
  size_t RunsOn(const std::string& node) {
    absl::MutexLock lock(&mu_);
    size_t n = 0;
    for (const auto& [who, fence] : ran_) n += who == node;
    return n;
  }

  absl::Mutex mu_;
  absl::Time now_ = absl::FromUnixSeconds(1764000000);
  std::vector<std::pair<std::string, std::string>> ran_;
  std::string dir_;
  std::unique_ptr<storage::RocksDbStorage> db_;
  std::unique_ptr<commit::WritePath> log_;
};

TEST_F(BackgroundWorkTest, OnlyTheHolderRunsAndAnotherNodeResumes) {
  auto lease_a = Lease("node-a");
  auto lease_b = Lease("node-b");
  ASSERT_THAT(lease_a->Step(), IsOkAndHolds(true));
  ASSERT_THAT(lease_b->Step(), IsOkAndHolds(false));
  auto work_a = BackgroundWork::Start(lease_a.get(), {Recording("node-a")},
                                      {.poll = absl::Milliseconds(5)});
  auto work_b = BackgroundWork::Start(lease_b.get(), {Recording("node-b")},
                                      {.poll = absl::Milliseconds(5)});
  ASSERT_THAT(work_a, IsOk());
  ASSERT_THAT(work_b, IsOk());
  ASSERT_TRUE(testing::Eventually(absl::Seconds(10),
                                  [&] { return RunsOn("node-a") >= 3; }));
  EXPECT_EQ(RunsOn("node-b"), 0u);

  // node-a stops renewing (it died); node-b takes the lease and the work.
  Advance(absl::Seconds(20));
  ASSERT_THAT(lease_b->Step(), IsOkAndHolds(true));
  ASSERT_TRUE(testing::Eventually(absl::Seconds(10),
                                  [&] { return RunsOn("node-b") >= 3; }));
  const size_t a_runs = RunsOn("node-a");
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(RunsOn("node-a"), a_runs);  // not held: no more runs
  absl::MutexLock lock(&mu_);
  for (const auto& [node, fence] : ran_) {
    // Each run had its holder's fence: 1 for node-a, 2 for node-b.
    EXPECT_EQ(fence, std::string(7, '\0') + (node == "node-a" ? '\1' : '\2'));
  }
}

// A node that does not hold the lease asks about once per poll, not in a
// busy loop (it burnt a quarter of a core on idle nodes).
TEST_F(BackgroundWorkTest, NodeWithoutTheLeaseChecksOncePerPoll) {
  auto lease_a = Lease("node-a");
  auto lease_b = Lease("node-b");
  ASSERT_THAT(lease_a->Step(), IsOkAndHolds(true));
  ASSERT_THAT(lease_b->Step(), IsOkAndHolds(false));
  constexpr absl::Duration kPoll = absl::Milliseconds(50);
  auto work_b = BackgroundWork::Start(lease_b.get(), {Recording("node-b")},
                                      {.poll = kPoll});
  ASSERT_THAT(work_b, IsOk());
  const absl::Time start = absl::Now();
  absl::SleepFor(absl::Milliseconds(500));
  const uint64_t checks = (*work_b)->lease_checks(0);
  const int64_t polls = (absl::Now() - start) / kPoll;
  EXPECT_GE(checks, 1u);
  EXPECT_LE(checks, static_cast<uint64_t>(polls + 2));
  EXPECT_EQ(RunsOn("node-b"), 0u);
}

TEST_F(BackgroundWorkTest, AFailedRunIsCountedAndRetriedAtTheNextInterval) {
  auto lease = Lease("node-a");
  ASSERT_THAT(lease->Step(), IsOkAndHolds(true));
  auto work =
      BackgroundWork::Start(lease.get(),
                            {{.name = "failing",
                              .interval = absl::Milliseconds(10),
                              .run =
                                  [](const storage::Condition&) {
                                    return absl::UnavailableError("store down");
                                  },
                              .cancel = nullptr}},
                            {.poll = absl::Milliseconds(5)});
  ASSERT_THAT(work, IsOk());
  ASSERT_TRUE(testing::Eventually(absl::Seconds(10),
                                  [&] { return (*work)->failures(0) >= 3; }));
  EXPECT_EQ((*work)->runs(0), (*work)->failures(0));
}

TEST_F(BackgroundWorkTest, StartRefusesJobsWithoutIntervalOrRun) {
  auto lease = Lease("node-a");
  EXPECT_THAT(BackgroundWork::Start(nullptr, {}, {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      BackgroundWork::Start(
          lease.get(),
          {{.name = "x",
            .interval = absl::ZeroDuration(),
            .run = [](const storage::Condition&) { return absl::OkStatus(); },
            .cancel = nullptr}},
          {}),
      StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(BackgroundWork::Start(lease.get(),
                                    {{.name = "x",
                                      .interval = absl::Seconds(1),
                                      .run = nullptr,
                                      .cancel = nullptr}},
                                    {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace cardvault::coordination
