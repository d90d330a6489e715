#include "server/storage/rocksdb_storage.h"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rocksdb/db.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/store_writes.h"

namespace cardvault::storage {
namespace {

using ::cardvault::testing::CommitOne;
using ::cardvault::testing::IsOk;
using ::cardvault::testing::IsOkAndHolds;
using ::cardvault::testing::Put;
using ::cardvault::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
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

// Reads every file under `dir` into one string.
std::string AllFileBytes(const std::filesystem::path& dir) {
  std::string all;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    all.append(std::istreambuf_iterator<char>(in), {});
  }
  return all;
}

TEST_F(RocksDbStorageTest, CompactionDropsExpiredAndDeletedValues) {
  // Values "exp:<ms>" expire at <ms>; anything else never.
  absl::Time now = absl::FromUnixSeconds(1000);
  RocksDbStorage::Options options{.data_dir = dir_.string()};
  options.expiry_of = [](Table, absl::string_view, absl::string_view value) {
    if (!absl::ConsumePrefix(&value, "exp:")) return absl::InfiniteFuture();
    int64_t ms = 0;
    return absl::SimpleAtoi(value, &ms) ? absl::FromUnixMillis(ms)
                                        : absl::InfiniteFuture();
  };
  options.now = [&now] { return now; };
  auto db = *RocksDbStorage::Open(options);
  Transaction w;
  w.writes.push_back({Table::kTokens, "tok_expiring", "exp:1500000"});
  w.writes.push_back({Table::kTokens, "tok_deleted", "DELETED-RECORD"});
  w.writes.push_back({Table::kTokens, "tok_kept", "KEPT-RECORD"});
  w.writes.push_back({Table::kPanIndex, "idx_expiring", "exp:1500000"});
  ASSERT_THAT(CommitOne(*db, w), IsOk());
  ASSERT_THAT(db->Flush(), IsOk());
  Transaction d;
  d.writes.push_back({Table::kTokens, "tok_deleted", std::nullopt});
  ASSERT_THAT(CommitOne(*db, d), IsOk());
  // Not yet expired: compaction keeps it.
  ASSERT_THAT(db->CompactTokenData(), IsOk());
  EXPECT_THAT(db->Get(Table::kTokens, "tok_expiring"), IsOk());
  now = absl::FromUnixSeconds(1500);
  ASSERT_THAT(db->CompactTokenData(), IsOk());
  EXPECT_THAT(db->Get(Table::kTokens, "tok_expiring"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(db->Get(Table::kPanIndex, "idx_expiring"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(db->Get(Table::kTokens, "tok_kept"),
              IsOkAndHolds(std::string("KEPT-RECORD")));
  db.reset();
  const std::string files = AllFileBytes(dir_);
  EXPECT_THAT(files, HasSubstr("KEPT-RECORD"));
  EXPECT_THAT(files, Not(HasSubstr("DELETED-RECORD")));
  EXPECT_THAT(files, Not(HasSubstr("exp:1500000")));
}

TEST_F(RocksDbStorageTest, TokensAndKeysLiveInSeparateColumnFamilies) {
  {
    auto db = Open();
    ASSERT_THAT(CommitOne(*db, Put(Table::kTokens, "same-id", "token-record")),
                IsOk());
    ASSERT_THAT(db->InsertKey("same-id", "key-record"), IsOk());
    EXPECT_THAT(db->ListKeys(),
                IsOkAndHolds(ElementsAre(Pair("same-id", "key-record"))));
  }
  std::vector<std::string> families;
  ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(),
                                              dir_.string(), &families)
                  .ok());
  EXPECT_THAT(families, UnorderedElementsAre("default", "tokens", "pan_index",
                                             "idempotency", "shared", "keys",
                                             "key_usage", "audit"));
}

TEST_F(RocksDbStorageTest, SecondOpenOfSameDirectoryIsUnavailable) {
  auto db = Open();
  EXPECT_THAT(RocksDbStorage::Open({.data_dir = dir_.string()}),
              StatusIs(absl::StatusCode::kUnavailable));
}

}  // namespace
}  // namespace cardvault::storage
