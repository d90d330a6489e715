#include "server/storage/rocksdb_storage.h"

#include <filesystem>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rocksdb/db.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::storage {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::IsOkAndHolds;
using ::cardvault::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

class RocksDbStorageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("cardvault-rocksdb-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::unique_ptr<RocksDbStorage> Open() {
    return *RocksDbStorage::Open({.data_dir = dir_.string()});
  }
  std::filesystem::path dir_;
};

TEST_F(RocksDbStorageTest, LookupReturnsInsertedRecord) {
  auto db = Open();
  ASSERT_THAT(db->Insert("tok_a", "record-a"), IsOk());
  EXPECT_THAT(db->Lookup("tok_a"), IsOkAndHolds(std::string("record-a")));
  EXPECT_THAT(db->Lookup("tok_b"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(RocksDbStorageTest, InsertNeverOverwrites) {
  auto db = Open();
  ASSERT_THAT(db->Insert("tok_a", "first"), IsOk());
  EXPECT_THAT(db->Insert("tok_a", "second"),
              StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(db->Lookup("tok_a"), IsOkAndHolds(std::string("first")));
  ASSERT_THAT(db->InsertKey("dek/1", "k1"), IsOk());
  EXPECT_THAT(db->InsertKey("dek/1", "k2"),
              StatusIs(absl::StatusCode::kAlreadyExists));
}

TEST_F(RocksDbStorageTest, ConcurrentInsertsOfOneTokenHaveOneWinner) {
  auto db = Open();
  std::atomic<int> winners{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      if (db->Insert("tok_same", "r" + std::to_string(i)).ok()) ++winners;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(winners.load(), 1);
}

TEST_F(RocksDbStorageTest, TokensAndKeysLiveInSeparateColumnFamilies) {
  {
    auto db = Open();
    ASSERT_THAT(db->Insert("same-id", "token-record"), IsOk());
    ASSERT_THAT(db->InsertKey("same-id", "key-record"), IsOk());
    EXPECT_THAT(db->ListKeys(),
                IsOkAndHolds(ElementsAre(Pair("same-id", "key-record"))));
  }
  std::vector<std::string> families;
  ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(),
                                              dir_.string(), &families)
                  .ok());
  EXPECT_THAT(families, UnorderedElementsAre("default", "tokens", "keys"));
}

TEST_F(RocksDbStorageTest, DataSurvivesReopen) {
  {
    auto db = Open();
    ASSERT_THAT(db->Insert("tok_a", "record-a"), IsOk());
    ASSERT_THAT(db->InsertKey("dek/1", "k1"), IsOk());
  }
  auto db = Open();
  EXPECT_THAT(db->Lookup("tok_a"), IsOkAndHolds(std::string("record-a")));
  EXPECT_THAT(db->ListKeys(), IsOkAndHolds(ElementsAre(Pair("dek/1", "k1"))));
}

TEST_F(RocksDbStorageTest, SecondOpenOfSameDirectoryIsUnavailable) {
  auto db = Open();
  EXPECT_THAT(RocksDbStorage::Open({.data_dir = dir_.string()}),
              StatusIs(absl::StatusCode::kUnavailable));
}

}  // namespace
}  // namespace cardvault::storage
