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

WriteSet TokenAndAudit(std::string token, std::string record, uint64_t seq) {
  WriteSet w;
  w.new_tokens.emplace_back(std::move(token), std::move(record));
  w.audit_records.emplace_back(seq, "audit-" + std::to_string(seq));
  return w;
}

TEST_F(RocksDbStorageTest, LookupReturnsCommittedRecord) {
  auto db = Open();
  ASSERT_THAT(db->Commit(TokenAndAudit("tok_a", "record-a", 1)), IsOk());
  EXPECT_THAT(db->Lookup("tok_a"), IsOkAndHolds(std::string("record-a")));
  EXPECT_THAT(db->Contains("tok_a"), IsOkAndHolds(true));
  EXPECT_THAT(db->Lookup("tok_b"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(db->Contains("tok_b"), IsOkAndHolds(false));
}

TEST_F(RocksDbStorageTest, AuditRecordsScanInSequenceOrder) {
  auto db = Open();
  EXPECT_THAT(db->LastAuditRecord(), IsOkAndHolds(std::nullopt));
  // Written out of order, and past 255 so that byte order matters.
  for (uint64_t seq : {3, 1, 256, 2}) {
    WriteSet w;
    w.audit_records.emplace_back(seq, "r" + std::to_string(seq));
    ASSERT_THAT(db->Commit(w), IsOk());
  }
  std::vector<uint64_t> seen;
  ASSERT_THAT(db->ScanAudit(2,
                            [&](uint64_t seq, absl::string_view record) {
                              EXPECT_EQ(record, "r" + std::to_string(seq));
                              seen.push_back(seq);
                              return true;
                            }),
              IsOk());
  EXPECT_THAT(seen, ElementsAre(2, 3, 256));
  EXPECT_THAT(db->LastAuditRecord(),
              IsOkAndHolds(std::optional(
                  std::pair<uint64_t, std::string>(256, "r256"))));
}

TEST_F(RocksDbStorageTest, KeysAreNeverOverwritten) {
  auto db = Open();
  ASSERT_THAT(db->InsertKey("dek/1", "k1"), IsOk());
  EXPECT_THAT(db->InsertKey("dek/1", "k2"),
              StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(db->ListKeys(), IsOkAndHolds(ElementsAre(Pair("dek/1", "k1"))));
}

TEST_F(RocksDbStorageTest, TokensAndKeysLiveInSeparateColumnFamilies) {
  {
    auto db = Open();
    ASSERT_THAT(db->Commit(TokenAndAudit("same-id", "token-record", 1)),
                IsOk());
    ASSERT_THAT(db->InsertKey("same-id", "key-record"), IsOk());
    EXPECT_THAT(db->ListKeys(),
                IsOkAndHolds(ElementsAre(Pair("same-id", "key-record"))));
  }
  std::vector<std::string> families;
  ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(),
                                              dir_.string(), &families)
                  .ok());
  EXPECT_THAT(families,
              UnorderedElementsAre("default", "tokens", "keys", "audit"));
}

TEST_F(RocksDbStorageTest, DataSurvivesReopen) {
  {
    auto db = Open();
    ASSERT_THAT(db->Commit(TokenAndAudit("tok_a", "record-a", 1)), IsOk());
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
