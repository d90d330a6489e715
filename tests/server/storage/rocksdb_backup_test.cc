#include "server/storage/rocksdb_backup.h"

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/store_writes.h"

namespace cardvault::storage {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;

class RocksDbBackupStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(
        ::testing::TempDir(), "rocksdb_backup_test_", getpid(), "_",
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    db_ = *RocksDbStorage::Open({.data_dir = dir_ + "/data"});
    backups_ = *RocksDbBackupStore::Open(
        db_.get(), {.directory = dir_ + "/backups",
                    .staging_dir = dir_ + "/data.staging"});
  }
  void TearDown() override {
    backups_.reset();
    db_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Write(int from, int to) {
    Transaction w;
    for (int i = from; i < to; ++i) {
      w.writes.push_back({.table = Table::kTokens,
                          .key = absl::StrCat("tok_", 100000 + i),
                          .value = std::string(200, 'c')});
    }
    ASSERT_THAT(testing::CommitOne(*db_, std::move(w)), IsOk());
  }
  // Describes a copy by its token count.
  static absl::StatusOr<std::string> CountTokens(const StoreView& copy) {
    auto rows = copy.records().Scan(Table::kTokens, "", 1 << 20);
    if (!rows.ok()) return rows.status();
    return absl::StrCat(rows->size());
  }

  std::string dir_;
  std::unique_ptr<RocksDbStorage> db_;
  std::unique_ptr<RocksDbBackupStore> backups_;
};

TEST_F(RocksDbBackupStoreTest, LaterBackupsCopyOnlyNewFiles) {
  Write(0, 5000);
  auto first = backups_->Create(CountTokens);
  ASSERT_THAT(first, IsOk());
  EXPECT_EQ(first->id, 1u);
  EXPECT_EQ(first->metadata, "5000");
  EXPECT_EQ(first->new_bytes, first->size_bytes);
  Write(5000, 5010);
  auto second = backups_->Create(CountTokens);
  ASSERT_THAT(second, IsOk());
  EXPECT_EQ(second->metadata, "5010");
  EXPECT_GT(second->size_bytes, first->size_bytes);
  EXPECT_LT(second->new_bytes, first->size_bytes / 10);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/data.staging"));
  // What was described is what is kept: opened in place, read-only.
  auto view = backups_->Open(1);
  ASSERT_THAT(view, IsOk());
  absl::StatusOr<std::string> count = CountTokens(**view);
  ASSERT_THAT(count, IsOk());
  EXPECT_EQ(*count, "5000");
  EXPECT_FALSE((*view)->keys().InsertKey("k", "v").ok());
  EXPECT_THAT(backups_->VerifyFiles(2), IsOk());
}

TEST_F(RocksDbBackupStoreTest, FailedDescriptionKeepsNoBackup) {
  Write(0, 10);
  EXPECT_THAT(
      backups_->Create([](const StoreView&) -> absl::StatusOr<std::string> {
        return absl::InternalError("no");
      }),
      StatusIs(absl::StatusCode::kInternal));
  auto all = backups_->List();
  ASSERT_THAT(all, IsOk());
  EXPECT_TRUE(all->empty());
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/data.staging"));
  // A stale staging copy (a crash) does not stop the next backup.
  std::filesystem::create_directories(dir_ + "/data.staging/junk");
  EXPECT_THAT(backups_->Create(CountTokens), IsOk());
}

TEST_F(RocksDbBackupStoreTest, UnknownIdsAreNotFoundAndRestoreNeedsANewDir) {
  EXPECT_THAT(backups_->Get(3), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(backups_->Delete(3), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(backups_->Open(3), StatusIs(absl::StatusCode::kNotFound));
  Write(0, 10);
  ASSERT_THAT(backups_->Create(CountTokens), IsOk());
  EXPECT_THAT(backups_->RestoreTo(1, dir_ + "/data"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_THAT(backups_->RestoreTo(1, dir_ + "/restored"), IsOk());
  auto restored = RocksDbStorage::Open({.data_dir = dir_ + "/restored"});
  ASSERT_THAT(restored, IsOk());
  EXPECT_THAT((*restored)->Get(Table::kTokens, "tok_100003"), IsOk());
  // (A lock held by another process is refused: backup_restore_test.)
  restored->reset();
  EXPECT_THAT(RocksDbStorage::CheckNotInUse(dir_ + "/restored"), IsOk());
  ASSERT_THAT(backups_->Delete(1), IsOk());
  EXPECT_THAT(backups_->Get(1), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(RocksDbBackupStoreTest, ReadOnlyStoreListsButCannotBackUpOrDelete) {
  Write(0, 10);
  ASSERT_THAT(backups_->Create(CountTokens), IsOk());
  auto reader = RocksDbBackupStore::Open(
      nullptr, {.directory = dir_ + "/backups", .read_only = true});
  ASSERT_THAT(reader, IsOk());
  auto all = (*reader)->List();
  ASSERT_THAT(all, IsOk());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_THAT((*reader)->Create(CountTokens),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT((*reader)->Delete(1),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(RocksDbBackupStore::Open(
                  nullptr, {.directory = dir_ + "/none", .read_only = true}),
              StatusIs(absl::StatusCode::kNotFound));
  // One writer per directory.
  EXPECT_THAT(
      RocksDbBackupStore::Open(nullptr, {.directory = dir_ + "/backups"}),
      StatusIs(absl::StatusCode::kFailedPrecondition,
               ::testing::HasSubstr("in use")));
}

}  // namespace
}  // namespace cardvault::storage
