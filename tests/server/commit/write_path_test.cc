// The audit chain over a real RocksDB: group-committed appends, atomic token
// writes, fail-closed behaviour, and detection of every kind of tampering.
#include "server/commit/write_path.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rocksdb/convenience.h"
#include "rocksdb/db.h"
#include "rocksdb/merge_operator.h"
#include "server/storage/rocksdb_storage.h"
#include "tests/testing/eventually.h"
#include "tests/testing/fault_injecting_store.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::commit {
namespace {

using ::cardvault::audit::DecodeAuditEvent;
using ::cardvault::audit::kAuditRecordHeaderBytes;
using ::cardvault::testing::IsOk;
using ::cardvault::testing::IsOkAndHolds;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;

std::unique_ptr<crypto::HmacSha256> Key(char fill) {
  return *crypto::HmacSha256::Create(
      crypto::SecretBytes(std::string(32, fill)));
}

AuditEvent Event(absl::string_view identity, absl::string_view token = "") {
  AuditEvent e;
  e.set_event_type(v1::DETOKENIZE);
  e.set_identity(std::string(identity));
  e.set_token(std::string(token));
  e.mutable_event_time()->set_seconds(1764000000);
  return e;
}

class WritePathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        (std::filesystem::temp_directory_path() /
         absl::StrCat(
             "cardvault-audit-", getpid(), "-",
             ::testing::UnitTest::GetInstance()->current_test_info()->name()))
            .string();
    std::filesystem::remove_all(dir_);
    Reopen('k');
  }
  void TearDown() override {
    Close();
    std::filesystem::remove_all(dir_);
  }
  void Close() {
    log_.reset();
    faults_.reset();
    db_.reset();
  }
  // Options that resume a trail restored up to `sequence`.
  static WritePath::Options ResumingAfter(uint64_t sequence) {
    WritePath::Options options;
    options.resume_after_sequence = sequence;
    return options;
  }
  void Reopen(char key_fill, WritePath::Options options = {}) {
    Close();
    db_ = *storage::RocksDbStorage::Open({.data_dir = dir_});
    faults_ = std::make_unique<testing::FaultInjectingStore>(db_.get());
    auto log = WritePath::Open(faults_.get(), faults_.get(), Key(key_fill), 1,
                               options);
    ASSERT_THAT(log, IsOk());
    log_ = *std::move(log);
  }
  // Every event stored, in order.
  std::vector<AuditEvent> Stored() {
    std::vector<AuditEvent> out;
    EXPECT_THAT(log_->Scan(1,
                           [&](const AuditEvent& e) {
                             out.push_back(e);
                             return true;
                           }),
                IsOk());
    return out;
  }
  void AppendMany(int n) {
    for (int i = 0; i < n; ++i) {
      ASSERT_THAT(log_->Append(Event(absl::StrCat("id-", i))), IsOk());
    }
  }
  // Edits the raw audit column family with the vault closed, as an attacker
  // with file access would.
  void Tamper(const std::function<void(rocksdb::DB*,
                                       rocksdb::ColumnFamilyHandle*)>& edit) {
    Close();
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (const char* name : {"default", "tokens", "pan_index", "idempotency",
                             "shared", "keys", "key_usage", "audit"}) {
      cfs.emplace_back(name, rocksdb::ColumnFamilyOptions());
    }
    rocksdb::ConfigOptions config;
    ASSERT_TRUE(rocksdb::MergeOperator::CreateFromString(
                    config, "uint64add", &cfs[6].options.merge_operator)
                    .ok());
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(
        rocksdb::DB::Open(rocksdb::DBOptions(), dir_, cfs, &handles, &raw)
            .ok());
    edit(raw, handles[7]);
    for (auto* h : handles) raw->DestroyColumnFamilyHandle(h);
    delete raw;
    Reopen('k');
  }
  // Sets the stored chain head to the record at `seq`.
  static void MoveHeadTo(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* audit,
                         uint64_t seq) {
    std::string record;
    ASSERT_TRUE(
        db->Get(rocksdb::ReadOptions(), audit, Key8(seq), &record).ok());
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), "audit_head",
                        Key8(seq) + record.substr(5, 32))
                    .ok());
  }
  static std::string Key8(uint64_t seq) {
    std::string k(8, '\0');
    for (int i = 7; i >= 0; --i, seq >>= 8) k[i] = static_cast<char>(seq);
    return k;
  }

  std::string dir_;
  std::unique_ptr<storage::RocksDbStorage> db_;
  std::unique_ptr<testing::FaultInjectingStore> faults_;
  std::unique_ptr<WritePath> log_;
};

TEST_F(WritePathTest, ConcurrentAppendsFormOneGaplessVerifiedChain) {
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        EXPECT_THAT(log_->Append(Event(absl::StrCat("t", t, "-", i))), IsOk());
      }
    });
  }
  for (auto& t : threads) t.join();
  auto report = log_->Verify();
  ASSERT_THAT(report, IsOk());
  EXPECT_TRUE(report->intact) << report->problem;
  EXPECT_EQ(report->records_checked, 400u);
  EXPECT_EQ(report->head_sequence, 400u);
  std::set<std::string> identities;
  uint64_t expected = 1;
  ASSERT_THAT(log_->Scan(1,
                         [&](const AuditEvent& e) {
                           EXPECT_EQ(e.sequence(), expected++);
                           identities.insert(e.identity());
                           return true;
                         }),
              IsOk());
  EXPECT_EQ(identities.size(), 400u);
}

TEST_F(WritePathTest, ChainContinuesAcrossRestart) {
  AppendMany(5);
  Reopen('k');
  AppendMany(5);
  auto report = log_->Verify();
  ASSERT_THAT(report, IsOk());
  EXPECT_TRUE(report->intact) << report->problem;
  EXPECT_EQ(report->head_sequence, 10u);
}

Mutation NewToken(std::string token, std::string record) {
  Mutation m;
  m.conditions.push_back({storage::Table::kTokens, token, std::nullopt});
  m.writes.push_back(
      {storage::Table::kTokens, std::move(token), std::move(record)});
  return m;
}

TEST_F(WritePathTest, TokenIsWrittenOnlyWithItsAuditRecord) {
  ASSERT_THAT(log_->Append(Event("pos", "tok_1"), NewToken("tok_1", "rec-1")),
              IsOk());
  EXPECT_THAT(db_->Get(storage::Table::kTokens, "tok_1"),
              IsOkAndHolds(std::string("rec-1")));
  // A second write of the same token fails its condition and leaves no
  // audit record.
  int failed = -1;
  EXPECT_THAT(
      log_->Append(Event("pos", "tok_1"), NewToken("tok_1", "rec-2"), &failed),
      StatusIs(absl::StatusCode::kAborted));
  EXPECT_EQ(failed, 0);
  EXPECT_THAT(db_->Get(storage::Table::kTokens, "tok_1"),
              IsOkAndHolds(std::string("rec-1")));
  EXPECT_EQ(log_->Verify()->records_checked, 1u);
  // With storage failing, neither the token nor its record appear.
  faults_->FailCommits(true);
  EXPECT_THAT(log_->Append(Event("pos", "tok_2"), NewToken("tok_2", "rec")),
              StatusIs(absl::StatusCode::kUnavailable));
  faults_->FailCommits(false);
  EXPECT_THAT(db_->Get(storage::Table::kTokens, "tok_2"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(log_->Verify()->records_checked, 1u);
}

TEST_F(WritePathTest, ConditionsSeeEarlierEntriesOfTheSameWrite) {
  // Two entries claiming one index key in one write: the first wins, the
  // second's condition fails against the first's (not yet durable) value.
  std::vector<Entry> entries(2);
  for (int i = 0; i < 2; ++i) {
    entries[i].event = Event("pos", absl::StrCat("tok_", i));
    entries[i].mutation.conditions.push_back(
        {storage::Table::kPanIndex, "same-pan", std::nullopt});
    entries[i].mutation.writes.push_back(
        {storage::Table::kPanIndex, "same-pan", absl::StrCat("tok_", i)});
  }
  const int commits_before = faults_->commits();
  log_->AppendAll(entries);
  EXPECT_THAT(entries[0].result, IsOk());
  EXPECT_THAT(entries[1].result, StatusIs(absl::StatusCode::kAborted));
  EXPECT_EQ(entries[1].failed_condition, 0);
  EXPECT_EQ(faults_->commits() - commits_before, 1);
  EXPECT_THAT(db_->Get(storage::Table::kPanIndex, "same-pan"),
              IsOkAndHolds(std::string("tok_0")));
  // A condition on the value now stored holds.
  Mutation replace;
  replace.conditions.push_back(
      {storage::Table::kPanIndex, "same-pan", std::string("tok_0")});
  replace.writes.push_back(
      {storage::Table::kPanIndex, "same-pan", std::nullopt});
  EXPECT_THAT(log_->Append(Event("pos", "tok_0"), replace), IsOk());
  EXPECT_THAT(db_->Get(storage::Table::kPanIndex, "same-pan"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(WritePathTest, AppendAllIsOneWriteForManyEntries) {
  std::vector<Entry> entries(500);
  for (size_t i = 0; i < entries.size(); ++i) {
    entries[i].event = Event("pos", absl::StrCat("tok_", i));
    entries[i].mutation = NewToken(absl::StrCat("tok_", i), "rec");
  }
  const int commits_before = faults_->commits();
  log_->AppendAll(entries);
  for (const Entry& e : entries) EXPECT_THAT(e.result, IsOk());
  EXPECT_EQ(faults_->commits() - commits_before, 1);
  EXPECT_EQ(log_->Verify()->records_checked, 500u);
}

TEST_F(WritePathTest, AsyncAppendCompletesOnceDurableOffTheCallersThread) {
  std::vector<Entry> entries(2);
  for (int i = 0; i < 2; ++i) {
    entries[i].event = Event("pos", absl::StrCat("tok_", i));
    entries[i].mutation = NewToken(absl::StrCat("tok_", i), "rec");
  }
  absl::Notification done;
  std::thread::id completed_on;
  std::vector<absl::Status> results;
  absl::StatusOr<std::string> stored_when_done;
  log_->AppendAllAsync(std::move(entries), [&](std::vector<Entry>& written) {
    completed_on = std::this_thread::get_id();
    for (const Entry& e : written) results.push_back(e.result);
    // By the time the caller hears of it, the token is in storage.
    stored_when_done = db_->Get(storage::Table::kTokens, "tok_1");
    done.Notify();
  });
  done.WaitForNotification();
  EXPECT_NE(completed_on, std::this_thread::get_id());
  EXPECT_THAT(results, ::testing::ElementsAre(IsOk(), IsOk()));
  EXPECT_THAT(stored_when_done, IsOkAndHolds(std::string("rec")));
  EXPECT_EQ(log_->Verify()->records_checked, 2u);
}

TEST_F(WritePathTest, AppendsBeyondThePendingBoundAreRefusedAndWriteNothing) {
  WritePath::Options options;
  options.max_pending_events = 3;
  Reopen('k', options);
  // The first completion holds the completion thread, so nothing appended
  // after it is answered (and leaves the bound) until it returns.
  absl::Notification release;
  absl::Notification first_done;
  std::vector<Entry> first(1);
  first[0].event = Event("pos", "tok_held");
  log_->AppendAllAsync(std::move(first), [&](std::vector<Entry>&) {
    release.WaitForNotification();
    first_done.Notify();
  });
  std::atomic<int> accepted_done{0};
  std::vector<Entry> two(2);
  two[0].event = Event("pos", "tok_a");
  two[1].event = Event("pos", "tok_b");
  log_->AppendAllAsync(std::move(two),
                       [&](std::vector<Entry>&) { ++accepted_done; });
  // Over the bound: answered at once, on this thread, and not written.
  std::vector<Entry> over(1);
  over[0].event = Event("pos", "tok_over");
  over[0].mutation = NewToken("tok_over", "rec");
  std::optional<absl::Status> refused;
  std::thread::id refused_on;
  log_->AppendAllAsync(std::move(over), [&](std::vector<Entry>& e) {
    refused = e[0].result;
    refused_on = std::this_thread::get_id();
  });
  ASSERT_TRUE(refused.has_value());
  EXPECT_THAT(*refused, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(refused_on, std::this_thread::get_id());
  EXPECT_EQ(log_->overload_refusals(), 1u);
  release.Notify();
  first_done.WaitForNotification();
  // Once the pending ones are answered, appends are accepted again.
  absl::Status after = absl::UnavailableError("not tried");
  for (int i = 0; i < 200 && absl::IsUnavailable(after); ++i) {
    after = log_->Append(Event("pos", "tok_after"));
    if (!after.ok()) absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_THAT(after, IsOk());
  EXPECT_EQ(accepted_done.load(), 1);
  EXPECT_THAT(db_->Get(storage::Table::kTokens, "tok_over"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(log_->Verify()->records_checked, 4u);
}

TEST_F(WritePathTest, RecordedStringsAreMaskedAndEscapedBeforeTheyAreChained) {
  AuditEvent event = Event("pos", "tok_x");
  event.set_detail("note 4111111111111111\nforged");
  ASSERT_THAT(log_->Append(event), IsOk());
  std::vector<AuditEvent> stored = Stored();
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(stored[0].detail(), "note ************1111\\x0aforged");
  EXPECT_TRUE(log_->Verify()->intact);
}

TEST_F(WritePathTest, RefusalsPastTheRateBecomeOneSummaryRecord) {
  WritePath::Options options;
  options.refusals.per_minute = 3;
  options.refusals.interval = absl::Hours(1);  // written by hand below
  Reopen('k', options);
  for (int i = 0; i < 50; ++i) {
    AuditEvent e = Event("stranger");
    e.set_rpc("/cardvault.v1.TokenVault/Tokenize");
    e.set_status_code(static_cast<int>(absl::StatusCode::kPermissionDenied));
    ASSERT_THAT(log_->Append(e), IsOk());  // answered, recorded or counted
  }
  EXPECT_EQ(log_->Verify()->records_checked, 3u);
  EXPECT_EQ(log_->summarised_refusals(), 47u);
  log_->WriteRefusalSummaries();
  std::vector<AuditEvent> stored = Stored();
  ASSERT_EQ(stored.size(), 4u);
  EXPECT_EQ(stored[3].event_type(), v1::REFUSALS_SUMMARY);
  EXPECT_EQ(stored[3].refused_calls(), 47u);
  EXPECT_EQ(stored[3].identity(), "stranger");
  EXPECT_TRUE(log_->Verify()->intact);
}

TEST_F(WritePathTest, RefusedBatchItemsPastTheRateAreCountedNotListed) {
  WritePath::Options options;
  options.refusals.per_minute = 3;
  options.refusals.interval = absl::Hours(1);
  Reopen('k', options);
  // Ten malformed items and one good one in a batch call.
  std::vector<Entry> items(11);
  for (int i = 0; i < 10; ++i) {
    items[i].batch_index = static_cast<uint32_t>(i);
    items[i].event.set_status_code(
        static_cast<int>(absl::StatusCode::kInvalidArgument));
  }
  items[10].batch_index = 10;
  items[10].event.set_token("tok_good");
  items[10].mutation = NewToken("tok_good", "rec");
  AuditEvent call = Event("pos");
  call.set_rpc("/cardvault.v1.TokenVault/TokenizeBatch");
  absl::Notification done;
  std::vector<absl::Status> results;
  log_->AppendAsync(call, std::move(items), [&](std::vector<Entry>& written) {
    for (const Entry& e : written) results.push_back(e.result);
    done.Notify();
  });
  done.WaitForNotification();
  ASSERT_EQ(results.size(), 11u);
  for (const absl::Status& r : results) EXPECT_THAT(r, IsOk());
  log_->WriteRefusalSummaries();
  std::vector<AuditEvent> events = Stored();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].items_size(), 4);  // the burst of 3, and the good one
  EXPECT_EQ(events[1].event_type(), v1::REFUSALS_SUMMARY);
  EXPECT_EQ(events[1].refused_calls(), 7u);
  EXPECT_THAT(events[1].detail(),
              HasSubstr("TokenizeBatch INVALID_ARGUMENT x7"));
}

TEST_F(WritePathTest, CountedRefusalsAreWrittenWhenTheLogCloses) {
  WritePath::Options options;
  options.refusals.per_minute = 1;
  options.refusals.interval = absl::Hours(1);
  Reopen('k', options);
  for (int i = 0; i < 5; ++i) {
    AuditEvent e = Event("stranger");
    e.set_rpc("/cardvault.v1.WritePath/ListEvents");
    e.set_status_code(static_cast<int>(absl::StatusCode::kPermissionDenied));
    ASSERT_THAT(log_->Append(e), IsOk());
  }
  Reopen('k', options);  // closes the first log
  uint64_t counted = 0;
  ASSERT_THAT(log_->Scan(1,
                         [&](const AuditEvent& e) {
                           counted += e.refused_calls();
                           return true;
                         }),
              IsOk());
  EXPECT_EQ(counted, 4u);
}

TEST_F(WritePathTest, AsyncCompletionsRunInOrderOfTheirWrites) {
  constexpr int kCalls = 200;
  absl::Mutex mu;
  std::vector<uint64_t> sequences;
  absl::BlockingCounter left(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    std::vector<Entry> one(1);
    one[0].event = Event("pos");
    log_->AppendAllAsync(std::move(one), [&](std::vector<Entry>& written) {
      absl::MutexLock lock(&mu);
      sequences.push_back(written[0].event.sequence());
      left.DecrementCount();
    });
  }
  left.Wait();
  absl::MutexLock lock(&mu);
  ASSERT_EQ(sequences.size(), static_cast<size_t>(kCalls));
  EXPECT_TRUE(std::is_sorted(sequences.begin(), sequences.end()));
  EXPECT_EQ(log_->Verify()->records_checked, static_cast<uint64_t>(kCalls));
}

TEST_F(WritePathTest, BatchIsOneRecordListingTheItemsWritten) {
  // Three items of one call; the middle one claims a token already taken.
  ASSERT_THAT(
      log_->Append(Event("pos", "tok_taken"), NewToken("tok_taken", "first")),
      IsOk());
  std::vector<Entry> items(3);
  const std::string tokens[] = {"tok_a", "tok_taken", "tok_b"};
  for (int i = 0; i < 3; ++i) {
    items[i].batch_index = static_cast<uint32_t>(i);
    items[i].event.set_token(tokens[i]);
    items[i].event.set_domain("m1/pos");
    items[i].mutation = NewToken(tokens[i], "rec");
  }
  AuditEvent call = Event("pos");
  call.set_rpc("/cardvault.v1.TokenVault/TokenizeBatch");
  absl::Notification done;
  std::vector<absl::Status> results;
  log_->AppendAsync(call, std::move(items), [&](std::vector<Entry>& written) {
    for (const Entry& e : written) {
      results.push_back(e.result);
    }
    done.Notify();
  });
  done.WaitForNotification();
  EXPECT_THAT(results,
              ::testing::ElementsAre(
                  IsOk(), StatusIs(absl::StatusCode::kAborted), IsOk()));
  std::vector<AuditEvent> events = Stored();
  ASSERT_EQ(events.size(), 2u);  // the first token's record, the batch's
  const AuditEvent& batch = events[1];
  EXPECT_EQ(batch.identity(), "pos");
  EXPECT_EQ(batch.rpc(), "/cardvault.v1.TokenVault/TokenizeBatch");
  ASSERT_EQ(batch.items_size(), 2);
  EXPECT_EQ(batch.items(0).index(), 0u);
  EXPECT_EQ(batch.items(0).token(), "tok_a");
  EXPECT_EQ(batch.items(0).domain(), "m1/pos");
  EXPECT_EQ(batch.items(1).index(), 2u);
  EXPECT_EQ(batch.items(1).token(), "tok_b");
  EXPECT_THAT(db_->Get(storage::Table::kTokens, "tok_taken"),
              IsOkAndHolds(std::string("first")));
  EXPECT_THAT(log_->Verify(), IsOk());
  EXPECT_TRUE(log_->Verify()->intact);
}

TEST_F(WritePathTest, FailedWritesFailClosedCountAndRecover) {
  AppendMany(3);
  faults_->FailCommits(true);
  EXPECT_THAT(log_->Append(Event("processor")),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(log_->write_failures(), 1u);
  faults_->FailCommits(false);
  AppendMany(2);
  auto report = log_->Verify();
  ASSERT_THAT(report, IsOk());
  EXPECT_TRUE(report->intact) << report->problem;
  EXPECT_EQ(report->head_sequence, 5u);
}

TEST_F(WritePathTest, DeletedRecordIsDetected) {
  AppendMany(10);
  Tamper([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* audit) {
    ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), audit, Key8(4)).ok());
  });
  auto report = log_->Verify();
  ASSERT_THAT(report, IsOk());
  EXPECT_FALSE(report->intact);
  EXPECT_EQ(report->first_bad_sequence, 4u);
  EXPECT_THAT(report->problem, HasSubstr("missing"));
}

TEST_F(WritePathTest, EditedRecordIsDetected) {
  AppendMany(10);
  Tamper([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* audit) {
    std::string record;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), audit, Key8(6), &record).ok());
    AuditEvent event = *DecodeAuditEvent(record);
    event.set_identity("someone-else");  // same length is not needed: re-encode
    std::string edited =
        record.substr(0, kAuditRecordHeaderBytes) + event.SerializeAsString();
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), audit, Key8(6), edited).ok());
  });
  auto report = log_->Verify();
  ASSERT_THAT(report, IsOk());
  EXPECT_FALSE(report->intact);
  EXPECT_EQ(report->first_bad_sequence, 6u);
}

TEST_F(WritePathTest, ReorderedRecordsAreDetected) {
  AppendMany(10);
  Tamper([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* audit) {
    std::string a, b;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), audit, Key8(3), &a).ok());
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), audit, Key8(7), &b).ok());
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), audit, Key8(3), b).ok());
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), audit, Key8(7), a).ok());
  });
  auto report = log_->Verify();
  ASSERT_THAT(report, IsOk());
  EXPECT_FALSE(report->intact);
  EXPECT_EQ(report->first_bad_sequence, 3u);
}

TEST_F(WritePathTest, TruncationIsDetectedAgainstAnExportedCheckpoint) {
  AppendMany(10);
  auto before = log_->Verify();
  ASSERT_THAT(before, IsOk());
  const Checkpoint exported{before->head_sequence, before->head_mac};
  Tamper([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* audit) {
    for (uint64_t seq = 8; seq <= 10; ++seq) {
      ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), audit, Key8(seq)).ok());
    }
  });
  // The remaining chain is consistent in itself...
  EXPECT_TRUE(log_->Verify()->intact);
  // ...but no longer reaches the checkpoint.
  auto report = log_->Verify(exported);
  ASSERT_THAT(report, IsOk());
  EXPECT_FALSE(report->intact);
  EXPECT_THAT(report->problem, HasSubstr("truncated"));
  // A forged checkpoint MAC does not match either.
  EXPECT_FALSE(log_->Verify(Checkpoint{5, std::string(32, 'x')})->intact);
}

// A restore whose lost range is unknown (the old data directory was gone)
// must not excuse, for ever after, a checkpoint exported after the restore
// and then cut off: that is truncation of records written since.
TEST_F(WritePathTest, RestoreOfUnknownRangeDoesNotExcuseLaterTruncation) {
  AppendMany(5);  // the backup's head is 5
  AuditEvent restore = Event("cardvaultd");
  restore.set_event_type(v1::RESTORE);
  restore.mutable_restore()->set_backup_id(1);
  restore.mutable_restore()->mutable_backup_head()->set_sequence(5);
  restore.mutable_restore()->set_lost_from(6);  // lost_through 0: unknown
  ASSERT_THAT(log_->Append(restore), IsOk());   // 6
  AppendMany(20);                               // 7..26, after the restore
  auto before = log_->Verify();
  ASSERT_THAT(before, IsOk());
  ASSERT_EQ(before->head_sequence, 26u);
  const Checkpoint exported{before->head_sequence, before->head_mac};
  Tamper([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* audit) {
    for (uint64_t seq = 10; seq <= 26; ++seq) {
      ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), audit, Key8(seq)).ok());
    }
  });
  auto report = log_->Verify(exported);
  ASSERT_THAT(report, IsOk());
  EXPECT_FALSE(report->intact);
  EXPECT_EQ(report->checkpoint_lost_in_restore, 0u);
  EXPECT_THAT(report->problem, HasSubstr("truncated"));
}

// A restored chain: records 1..5 (the backup), records 6..9 lost, then the
// RESTORE event at 10 and more after it, as the first start after a restore
// writes them. Returns the RESTORE event's sequence.
uint64_t WriteRestoredChain(WritePathTest* test, WritePath* log,
                            const std::string& backup_head_mac) {
  AuditEvent restore = Event("cardvaultd");
  restore.set_event_type(v1::RESTORE);
  restore.mutable_restore()->set_backup_id(1);
  restore.mutable_restore()->mutable_backup_head()->set_sequence(5);
  restore.mutable_restore()->mutable_backup_head()->set_mac(backup_head_mac);
  restore.mutable_restore()->set_lost_from(6);
  restore.mutable_restore()->set_lost_through(9);
  EXPECT_THAT(log->Append(restore), IsOk());
  return 10;
}

TEST_F(WritePathTest, RestoreSkipsTheLostSequencesAndVerifies) {
  AppendMany(9);
  auto full = log_->Verify();
  ASSERT_THAT(full, IsOk());
  const Checkpoint lost_head{9, full->head_mac};
  // Back to the backup: records 6..9 gone, the log resumes after them.
  Tamper([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* audit) {
    for (uint64_t seq = 6; seq <= 9; ++seq) {
      ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), audit, Key8(seq)).ok());
    }
    MoveHeadTo(db, audit, 5);  // as the backup's copy holds it
  });
  Reopen('k', ResumingAfter(9));
  auto at_backup = log_->Verify();
  ASSERT_THAT(at_backup, IsOk());
  ASSERT_EQ(at_backup->head_sequence, 9u - 4u);
  WriteRestoredChain(this, log_.get(), at_backup->head_mac);
  AppendMany(3);  // 11..13
  auto report = log_->Verify();
  ASSERT_THAT(report, IsOk());
  EXPECT_TRUE(report->intact) << report->problem;
  EXPECT_EQ(report->head_sequence, 13u);
  ASSERT_EQ(report->restores.size(), 1u);
  EXPECT_EQ(report->restores[0].sequence, 10u);
  // The checkpoint of the lost head is reported as lost in the restore...
  auto lost = log_->Verify(lost_head);
  ASSERT_THAT(lost, IsOk());
  EXPECT_TRUE(lost->intact) << lost->problem;
  EXPECT_EQ(lost->checkpoint_lost_in_restore, 10u);
  // ...one exported after the restore, then cut off, is truncation, even
  // though its sequence is small.
  const Checkpoint after{report->head_sequence, report->head_mac};
  Tamper([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* audit) {
    for (uint64_t seq = 12; seq <= 13; ++seq) {
      ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), audit, Key8(seq)).ok());
    }
  });
  Reopen('k');
  auto cut = log_->Verify(after);
  ASSERT_THAT(cut, IsOk());
  EXPECT_FALSE(cut->intact);
  EXPECT_EQ(cut->checkpoint_lost_in_restore, 0u);
}

TEST_F(WritePathTest, AGapNotNamedByARestoreIsDetected) {
  AppendMany(5);
  auto head = log_->Verify();
  ASSERT_THAT(head, IsOk());
  // A RESTORE event that claims another range than the gap before it.
  Reopen('k', ResumingAfter(9));
  AuditEvent restore = Event("cardvaultd");
  restore.set_event_type(v1::RESTORE);
  restore.mutable_restore()->mutable_backup_head()->set_sequence(5);
  restore.mutable_restore()->mutable_backup_head()->set_mac(head->head_mac);
  restore.mutable_restore()->set_lost_from(6);
  restore.mutable_restore()->set_lost_through(8);
  ASSERT_THAT(log_->Append(restore), IsOk());  // at 10: 9 is unexplained
  auto report = log_->Verify();
  ASSERT_THAT(report, IsOk());
  EXPECT_FALSE(report->intact);
  EXPECT_EQ(report->first_bad_sequence, 6u);
  // And a gap with an ordinary event after it is a deletion.
  Reopen('k', ResumingAfter(20));
  AppendMany(1);
  report = log_->Verify();
  ASSERT_THAT(report, IsOk());
  EXPECT_FALSE(report->intact);
}

TEST_F(WritePathTest, ChainRebuiltWithoutTheAuditKeyIsDetected) {
  AppendMany(10);
  // An attacker with file access but no HSM rewrites the whole trail with a
  // key of their own: every MAC is self-consistent under the wrong key.
  Close();
  {
    auto db = *storage::RocksDbStorage::Open({.data_dir = dir_});
    std::vector<AuditEvent> events;
    ASSERT_THAT(db->ScanAudit(1,
                              [&](uint64_t, absl::string_view r) {
                                events.push_back(*DecodeAuditEvent(r));
                                return true;
                              }),
                IsOk());
    ASSERT_EQ(events.size(), 10u);
    // Rebuild into a fresh database, then copy over the original records.
    const std::string forged_dir = dir_ + "-forged";
    std::filesystem::remove_all(forged_dir);
    std::vector<std::pair<uint64_t, std::string>> forged;
    {
      auto forged_db = *storage::RocksDbStorage::Open({.data_dir = forged_dir});
      auto forged_log =
          *WritePath::Open(forged_db.get(), forged_db.get(), Key('X'), 1, {});
      for (AuditEvent& e : events) {
        e.set_identity("attacker-rewrote-" + e.identity());
        ASSERT_THAT(forged_log->Append(e), IsOk());
      }
      EXPECT_TRUE(forged_log->Verify()->intact);  // under the forger's key
      forged_log.reset();
      ASSERT_THAT(forged_db->ScanAudit(1,
                                       [&](uint64_t seq, absl::string_view r) {
                                         forged.emplace_back(seq,
                                                             std::string(r));
                                         return true;
                                       }),
                  IsOk());
    }
    db.reset();
    Tamper([&](rocksdb::DB* raw, rocksdb::ColumnFamilyHandle* audit) {
      for (const auto& [seq, record] : forged) {
        ASSERT_TRUE(
            raw->Put(rocksdb::WriteOptions(), audit, Key8(seq), record).ok());
      }
    });
    std::filesystem::remove_all(forged_dir);
  }
  Reopen('k');
  auto report = log_->Verify();
  ASSERT_THAT(report, IsOk());
  EXPECT_FALSE(report->intact);
  EXPECT_EQ(report->first_bad_sequence, 1u);
  EXPECT_THAT(report->problem, HasSubstr("MAC"));
}

AuditEvent EventAt(absl::Time t) {
  AuditEvent e = Event("someone");
  e.mutable_event_time()->set_seconds(absl::ToUnixSeconds(t));
  return e;
}

std::vector<uint64_t> Sequences(const WritePath& log) {
  std::vector<uint64_t> out;
  EXPECT_THAT(log.Scan(1,
                       [&](const AuditEvent& e) {
                         out.push_back(e.sequence());
                         return true;
                       }),
              IsOk());
  return out;
}

TEST_F(WritePathTest,
       PurgeRemovesOnlyRecordsPastRetentionAndChainStillVerifies) {
  const absl::Time now = absl::Now();
  for (int i = 0; i < 10; ++i) {
    ASSERT_THAT(log_->Append(EventAt(now - absl::Hours(24 * 500))), IsOk());
  }
  for (int i = 0; i < 5; ++i) {
    ASSERT_THAT(log_->Append(EventAt(now - absl::Hours(24 * 399))), IsOk());
  }
  EXPECT_THAT(log_->Purge(now), IsOkAndHolds(10u));
  EXPECT_THAT(Sequences(*log_),
              ::testing::ElementsAre(11, 12, 13, 14, 15, 16));  // 16: purge
  auto report = log_->Verify();
  ASSERT_THAT(report, IsOk());
  EXPECT_TRUE(report->intact) << report->problem;
  EXPECT_EQ(report->records_checked, 6u);
  // Nothing else is old enough; a second purge does nothing.
  EXPECT_THAT(log_->Purge(now), IsOkAndHolds(0u));
  // The chain continues, and survives a restart.
  AppendMany(2);
  Reopen('k');
  EXPECT_TRUE(log_->Verify()->intact);
}

TEST_F(WritePathTest, PurgeKeepsTheNewestRecordEvenWhenAllAreOld) {
  const absl::Time old = absl::Now() - absl::Hours(24 * 1000);
  for (int i = 0; i < 4; ++i) ASSERT_THAT(log_->Append(EventAt(old)), IsOk());
  EXPECT_THAT(log_->Purge(absl::Now()), IsOkAndHolds(3u));
  EXPECT_THAT(Sequences(*log_), ::testing::ElementsAre(4, 5));
  EXPECT_TRUE(log_->Verify()->intact);
}

TEST_F(WritePathTest, ForgedAnchorIsDetected) {
  const absl::Time old = absl::Now() - absl::Hours(24 * 1000);
  for (int i = 0; i < 4; ++i) ASSERT_THAT(log_->Append(EventAt(old)), IsOk());
  ASSERT_THAT(log_->Purge(absl::Now()), IsOkAndHolds(3u));
  Tamper([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* audit) {
    std::string anchor;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), audit, Key8(0), &anchor).ok());
    anchor[12] ^= 1;  // claim another sequence
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), audit, Key8(0), anchor).ok());
  });
  auto report = log_->Verify();
  ASSERT_THAT(report, IsOk());
  EXPECT_FALSE(report->intact);
  EXPECT_THAT(report->problem, HasSubstr("anchor"));
}

TEST_F(WritePathTest, PurgeBeforeTheRetentionPeriodIsDetected) {
  // A vault misconfigured (or tampered) to keep records one hour...
  WritePath::Options one_hour;
  one_hour.retention = absl::Hours(1);
  Reopen('k', one_hour);
  const absl::Time now = absl::Now();
  for (int i = 0; i < 4; ++i) {
    ASSERT_THAT(log_->Append(EventAt(now - absl::Hours(2))), IsOk());
  }
  ASSERT_THAT(log_->Purge(now), IsOkAndHolds(3u));
  // ...is caught by a verifier holding the real retention period.
  Reopen('k');
  auto report = log_->Verify();
  ASSERT_THAT(report, IsOk());
  EXPECT_FALSE(report->intact);
  EXPECT_THAT(report->problem, HasSubstr("before the retention period"));
}

TEST_F(WritePathTest, DeferredJobsLeaveTheFirstRecordToTheRestore) {
  const absl::Time old = absl::Now() - absl::Hours(24 * 1000);
  for (int i = 0; i < 4; ++i) ASSERT_THAT(log_->Append(EventAt(old)), IsOk());
  Reopen('k', {.resume_after_sequence = 9, .defer_background_jobs = true});
  EXPECT_THAT(Sequences(*log_), ::testing::ElementsAre(1, 2, 3, 4));
  // A failed write does not move the log back into the lost range.
  faults_->FailCommits(true);
  EXPECT_FALSE(log_->Append(Event("x")).ok());
  faults_->FailCommits(false);
  ASSERT_THAT(log_->Append(Event("restore stands in")), IsOk());
  EXPECT_THAT(Sequences(*log_), ::testing::ElementsAre(1, 2, 3, 4, 10));
  log_->StartBackgroundJobs();
  ASSERT_THAT(log_->Purge(absl::Now()), IsOk());
  EXPECT_NE(Sequences(*log_).front(), 1u);
}

TEST_F(WritePathTest, APurgeFencedByALeaseNoLongerHeldWritesNothing) {
  const absl::Time old = absl::Now() - absl::Hours(24 * 1000);
  for (int i = 0; i < 4; ++i) ASSERT_THAT(log_->Append(EventAt(old)), IsOk());
  ASSERT_THAT(
      storage::CommitUnaudited(*db_, {.conditions = {},
                                      .writes = {{storage::Table::kShared,
                                                  "fence/x", std::string("2")}},
                                      .counter_adds = {}}),
      IsOk());
  const storage::Condition stale{storage::Table::kShared, "fence/x",
                                 std::string("1")};
  EXPECT_THAT(log_->Purge(absl::Now(), stale),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(Sequences(*log_), ::testing::ElementsAre(1, 2, 3, 4));
  const storage::Condition held{storage::Table::kShared, "fence/x",
                                std::string("2")};
  EXPECT_THAT(log_->Purge(absl::Now(), held), IsOkAndHolds(3u));
  EXPECT_EQ(Sequences(*log_).front(), 4u);
}

}  // namespace
}  // namespace cardvault::commit
