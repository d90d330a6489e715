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

namespace cardvault::storage {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::IsOkAndHolds;
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

WriteSet TokenAndAudit(std::string token, std::string record, uint64_t seq) {
  WriteSet w;
  w.records.push_back({Table::kTokens, std::move(token), std::move(record)});
  w.audit_records.emplace_back(seq, "audit-" + std::to_string(seq));
  return w;
}

TEST_F(RocksDbStorageTest, GetReturnsCommittedRecord) {
  auto db = Open();
  ASSERT_THAT(db->Commit(TokenAndAudit("tok_a", "record-a", 1)), IsOk());
  EXPECT_THAT(db->Get(Table::kTokens, "tok_a"),
              IsOkAndHolds(std::string("record-a")));
  EXPECT_THAT(db->Get(Table::kTokens, "tok_b"),
              StatusIs(absl::StatusCode::kNotFound));
  // Tables are separate key spaces.
  EXPECT_THAT(db->Get(Table::kPanIndex, "tok_a"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(RocksDbStorageTest, ScanWalksATableInChunks) {
  auto db = Open();
  WriteSet w;
  for (const char* t : {"tok_c", "tok_a", "tok_b", "tok_d"}) {
    w.records.push_back({Table::kTokens, t, std::string("r") + t});
  }
  w.records.push_back({Table::kPanIndex, "idx", "other table"});
  ASSERT_THAT(db->Commit(w), IsOk());
  auto first = db->Scan(Table::kTokens, "", 3);
  ASSERT_THAT(first, IsOk());
  EXPECT_THAT(*first,
              ElementsAre(Pair("tok_a", "rtok_a"), Pair("tok_b", "rtok_b"),
                          Pair("tok_c", "rtok_c")));
  EXPECT_THAT(db->Scan(Table::kTokens, "tok_c", 3),
              IsOkAndHolds(ElementsAre(Pair("tok_d", "rtok_d"))));
  EXPECT_THAT(db->Scan(Table::kTokens, "tok_d", 3),
              IsOkAndHolds(::testing::IsEmpty()));
}

TEST_F(RocksDbStorageTest, KeyUsesAreSummedAcrossWritesAndReopen) {
  {
    auto db = Open();
    for (int i = 0; i < 3; ++i) {
      WriteSet w;
      w.key_uses.push_back({"dek/00000001", 1000});
      w.key_uses.push_back({"dek/00000002", 1});
      ASSERT_THAT(db->Commit(w), IsOk());
    }
  }
  auto db = Open();
  EXPECT_THAT(db->KeyUses(),
              IsOkAndHolds(ElementsAre(Pair("dek/00000001", 3000u),
                                       Pair("dek/00000002", 3u))));
}

TEST_F(RocksDbStorageTest, ReplaceKeyOnlyFromTheExpectedRecord) {
  auto db = Open();
  ASSERT_THAT(db->InsertKey("dek/1", "wrapped"), IsOk());
  EXPECT_THAT(db->ReplaceKey("dek/1", "other", "tombstone"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(db->ReplaceKey("dek/9", "", "tombstone"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_THAT(db->ReplaceKey("dek/1", "wrapped", "tombstone"), IsOk());
  EXPECT_THAT(db->ListKeys(),
              IsOkAndHolds(ElementsAre(Pair("dek/1", "tombstone"))));
}

TEST_F(RocksDbStorageTest, CommitDeletesAndPutsAtomically) {
  auto db = Open();
  ASSERT_THAT(db->Commit(TokenAndAudit("tok_a", "record-a", 1)), IsOk());
  WriteSet w;
  w.records.push_back({Table::kTokens, "tok_a", std::nullopt});
  w.records.push_back({Table::kPanIndex, "idx", "tok_b"});
  w.records.push_back({Table::kIdempotency, "key", "first"});
  ASSERT_THAT(db->Commit(w), IsOk());
  EXPECT_THAT(db->Get(Table::kTokens, "tok_a"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(db->Get(Table::kPanIndex, "idx"),
              IsOkAndHolds(std::string("tok_b")));
  EXPECT_THAT(db->Get(Table::kIdempotency, "key"),
              IsOkAndHolds(std::string("first")));
}

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
  options.expiry_of = [](Table, absl::string_view value) {
    if (!absl::ConsumePrefix(&value, "exp:")) return absl::InfiniteFuture();
    int64_t ms = 0;
    return absl::SimpleAtoi(value, &ms) ? absl::FromUnixMillis(ms)
                                        : absl::InfiniteFuture();
  };
  options.now = [&now] { return now; };
  auto db = *RocksDbStorage::Open(options);
  WriteSet w;
  w.records.push_back({Table::kTokens, "tok_expiring", "exp:1500000"});
  w.records.push_back({Table::kTokens, "tok_deleted", "DELETED-RECORD"});
  w.records.push_back({Table::kTokens, "tok_kept", "KEPT-RECORD"});
  w.records.push_back({Table::kPanIndex, "idx_expiring", "exp:1500000"});
  ASSERT_THAT(db->Commit(w), IsOk());
  ASSERT_THAT(db->Flush(), IsOk());
  WriteSet d;
  d.records.push_back({Table::kTokens, "tok_deleted", std::nullopt});
  ASSERT_THAT(db->Commit(d), IsOk());
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
  EXPECT_THAT(families, UnorderedElementsAre("default", "tokens", "pan_index",
                                             "idempotency", "keys", "key_usage",
                                             "audit"));
}

TEST_F(RocksDbStorageTest, DataSurvivesReopen) {
  {
    auto db = Open();
    ASSERT_THAT(db->Commit(TokenAndAudit("tok_a", "record-a", 1)), IsOk());
    ASSERT_THAT(db->InsertKey("dek/1", "k1"), IsOk());
  }
  auto db = Open();
  EXPECT_THAT(db->Get(Table::kTokens, "tok_a"),
              IsOkAndHolds(std::string("record-a")));
  EXPECT_THAT(db->ListKeys(), IsOkAndHolds(ElementsAre(Pair("dek/1", "k1"))));
}

TEST_F(RocksDbStorageTest, SecondOpenOfSameDirectoryIsUnavailable) {
  auto db = Open();
  EXPECT_THAT(RocksDbStorage::Open({.data_dir = dir_.string()}),
              StatusIs(absl::StatusCode::kUnavailable));
}

}  // namespace
}  // namespace cardvault::storage
