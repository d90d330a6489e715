// Reserved blocks of a bounded count: never more than the bound handed out,
// whatever the number of concurrent reservers, on RocksDB and across
// several PostgreSQL store instances (nodes).
#include "server/coordination/use_reservations.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/postgres_schema.h"
#include "server/storage/postgres_store.h"
#include "server/storage/rocksdb_storage.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::coordination {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::IsOkAndHolds;
using ::cardvault::testing::StatusIs;
using ::testing::AllOf;
using ::testing::Field;

class UseReservationsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        (std::filesystem::temp_directory_path() /
         absl::StrCat(
             "cardvault-reserve-", getpid(), "-",
             ::testing::UnitTest::GetInstance()->current_test_info()->name()))
            .string();
    std::filesystem::remove_all(dir_);
    db_ = *storage::RocksDbStorage::Open({.data_dir = dir_});
    uses_ = *UseReservations::Create(db_.get(), {});
  }
  void TearDown() override {
    uses_.reset();
    db_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::string dir_;
  std::unique_ptr<storage::RocksDbStorage> db_;
  std::unique_ptr<UseReservations> uses_;
};

TEST_F(UseReservationsTest, BlocksAddUpAndStopAtTheLimit) {
  EXPECT_THAT(uses_->Reserved("dek/1"), IsOkAndHolds(0u));
  EXPECT_THAT(uses_->Reserve("dek/1", 1, 40, 100),
              IsOkAndHolds(AllOf(Field(&UseReservations::Grant::granted, 40u),
                                 Field(&UseReservations::Grant::total, 40u))));
  EXPECT_THAT(uses_->Reserve("dek/1", 1, 40, 100),
              IsOkAndHolds(Field(&UseReservations::Grant::total, 80u)));
  // Only 20 left: granted as long as the minimum fits.
  EXPECT_THAT(uses_->Reserve("dek/1", 30, 40, 100),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(uses_->Reserve("dek/1", 5, 40, 100),
              IsOkAndHolds(AllOf(Field(&UseReservations::Grant::granted, 20u),
                                 Field(&UseReservations::Grant::total, 100u))));
  EXPECT_THAT(uses_->Reserve("dek/1", 1, 1, 100),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(uses_->Reserved("dek/1"), IsOkAndHolds(100u));
  EXPECT_THAT(uses_->Reserved("dek/2"), IsOkAndHolds(0u));  // its own count
}

TEST_F(UseReservationsTest, BadArgumentsAndRowsAreRefused) {
  EXPECT_THAT(uses_->Reserve("", 1, 1, 10),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(uses_->Reserve("c", 0, 1, 10),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(uses_->Reserve("c", 2, 1, 10),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(uses_->Reserve(std::string(129, 'c'), 1, 1, 10),
              StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_THAT(storage::CommitUnaudited(
                  *db_, {.conditions = {},
                         .writes = {{storage::Table::kShared,
                                     ReservationKey("c"), std::string("\x01")}},
                         .counter_adds = {}}),
              IsOk());
  EXPECT_THAT(uses_->Reserve("c", 1, 1, 10),
              StatusIs(absl::StatusCode::kDataLoss));
}

// `reservers` threads, each on its own store when `stores` has several,
// reserve blocks of 7 until the limit: every use is handed out exactly once.
void ReserveConcurrently(const std::vector<const storage::Store*>& stores,
                         int reservers, uint64_t limit) {
  std::vector<std::unique_ptr<UseReservations>> uses;
  for (const storage::Store* s : stores) {
    uses.push_back(*UseReservations::Create(s, {.max_attempts = 1000}));
  }
  std::atomic<uint64_t> granted{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < reservers; ++i) {
    threads.emplace_back([&, i] {
      const UseReservations& mine = *uses[i % uses.size()];
      for (;;) {
        absl::StatusOr<UseReservations::Grant> g =
            mine.Reserve("velocity/x", 1, 7, limit);
        if (absl::IsResourceExhausted(g.status())) return;
        ASSERT_THAT(g, IsOk());
        granted += g->granted;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(granted.load(), limit);
  EXPECT_THAT(uses[0]->Reserved("velocity/x"), IsOkAndHolds(limit));
}

TEST_F(UseReservationsTest, ConcurrentReserversNeverPassTheLimit) {
  ReserveConcurrently({db_.get()}, 8, 1000);
}

TEST(UseReservationsPostgresTest, NodesOnOneDatabaseNeverPassTheLimit) {
  auto server = testing::PostgresServer::Start({});
  ASSERT_THAT(server, IsOk());
  ASSERT_THAT(storage::MigratePostgres((*server)->conninfo()), IsOk());
  std::vector<std::unique_ptr<storage::PostgresStore>> nodes;
  std::vector<const storage::Store*> stores;
  for (int i = 0; i < 4; ++i) {
    auto s = storage::PostgresStore::Open(
        {.conninfo = (*server)->conninfo(), .pool_size = 2});
    ASSERT_THAT(s, IsOk());
    stores.push_back(s->get());
    nodes.push_back(*std::move(s));
  }
  ReserveConcurrently(stores, 8, 500);
}

}  // namespace
}  // namespace cardvault::coordination
