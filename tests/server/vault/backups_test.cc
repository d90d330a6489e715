#include "server/vault/backups.h"

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/rocksdb_backup.h"
#include "server/storage/rocksdb_storage.h"
#include "server/vault/card.h"
#include "server/vault/cvv_cache.h"
#include "server/vault/kek_manager.h"
#include "server/vault/key_ring.h"
#include "server/vault/vault.h"
#include "server/vault/wrapped_keys.h"
#include "tests/testing/eventually.h"
#include "tests/testing/fake_key_wrapper.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_cards.h"

namespace cardvault::vault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;

auth::Caller Named(absl::string_view name) {
  auth::Caller c;
  c.identity = absl::StrCat("spiffe://cardvault.test/", name);
  return c;
}

// Scheduled backups every `interval`, the rest as defaults.
Backups::Options Every(absl::Duration interval) {
  Backups::Options options;
  options.interval = interval;
  return options;
}

// A backup store that cannot take backups (its disk is full).
class FailingBackupStore : public storage::BackupStore {
 public:
  absl::StatusOr<storage::StoredBackup> Create(const Describe&) override {
    ++attempts;
    return absl::UnavailableError("backup disk full");
  }
  absl::StatusOr<std::vector<storage::StoredBackup>> List() const override {
    return std::vector<storage::StoredBackup>();
  }
  absl::StatusOr<storage::StoredBackup> Get(uint32_t) const override {
    return absl::NotFoundError("none");
  }
  absl::Status VerifyFiles(uint32_t) const override {
    return absl::NotFoundError("none");
  }
  absl::StatusOr<std::unique_ptr<storage::StoreView>> Open(
      uint32_t) const override {
    return absl::NotFoundError("none");
  }
  absl::Status Delete(uint32_t) override { return absl::NotFoundError("none"); }
  absl::Status RestoreTo(uint32_t, const std::string&) const override {
    return absl::NotFoundError("none");
  }
  std::atomic<int> attempts{0};
};

// A backup store whose backups take until released.
class SlowBackupStore : public FailingBackupStore {
 public:
  absl::StatusOr<storage::StoredBackup> Create(const Describe&) override {
    started.Notify();
    release.WaitForNotification();
    storage::StoredBackup backup;
    backup.id = 1;
    return backup;
  }
  absl::Notification started;
  absl::Notification release;
};

// A backup store whose lookups take until released (a long verification).
class SlowLookupStore : public FailingBackupStore {
 public:
  absl::StatusOr<storage::StoredBackup> Get(uint32_t) const override {
    started.Notify();
    release.WaitForNotification();
    return absl::NotFoundError("none");
  }
  mutable absl::Notification started;
  absl::Notification release;
};

class BackupsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(
        ::testing::TempDir(), "backups_test_", getpid(), "_",
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    db_ = *storage::RocksDbStorage::Open({.data_dir = dir_ + "/data"});
    kek_ =
        *KekManager::Open(db_.get(), &wrapper_, {.initial_label = "fake-kek"});
    ring_ = *KeyRing::Load(kek_.get(), {});
    MacKey audit_key = *LoadMacKey(kek_.get(), kAuditKeyPrefix);
    index_key_ = std::move(LoadMacKey(kek_.get(), kPanIndexKeyPrefix)->mac);
    fingerprint_key_ =
        std::move(LoadMacKey(kek_.get(), kFingerprintKeyPrefix)->mac);
    audit_ = *commit::WritePath::Open(
        db_.get(), db_.get(), std::move(audit_key.mac), audit_key.version, {});
    auth::PolicySpec spec;
    spec.purposes = {"authorization"};
    spec.bindings = {
        {Named("pos").identity, {auth::Role::kTokenizer}, {"m/pos"}, {}, {}},
        {Named("admin").identity, {auth::Role::kAdmin}, {}, {}, {}},
        {Named("auditor").identity, {auth::Role::kAuditor}, {}, {}, {}}};
    policy_ =
        std::make_unique<auth::PolicyHolder>(*auth::AccessPolicy::Create(spec));
    cvv_ = *CvvCache::Create({});
    vault_ = *Vault::Create({.records = db_.get(),
                             .keys = ring_.get(),
                             .index_key = index_key_.get(),
                             .fingerprint_key = fingerprint_key_.get(),
                             .cvv_cache = cvv_.get(),
                             .policy = policy_.get(),
                             .audit = audit_.get()},
                            {});
  }
  void TearDown() override {
    backups_.reset();
    store_.reset();
    vault_.reset();
    audit_.reset();
    db_.reset();
    std::filesystem::remove_all(dir_);
  }
  void UseRealStore(Backups::Options options = {}) {
    store_ = *storage::RocksDbBackupStore::Open(
        db_.get(), {.directory = dir_ + "/backups",
                    .staging_dir = dir_ + "/data.staging"});
    backups_ = *Backups::Create({.store = store_.get(),
                                 .wrapper = &wrapper_,
                                 .policy = policy_.get(),
                                 .audit = audit_.get()},
                                std::move(options));
  }
  std::vector<audit::AuditEvent> Events(v1::EventType type) {
    std::vector<audit::AuditEvent> out;
    EXPECT_THAT(audit_->Scan(1,
                             [&](const audit::AuditEvent& e) {
                               if (e.event_type() == type) out.push_back(e);
                               return true;
                             }),
                IsOk());
    return out;
  }

  std::string dir_;
  testing::FakeKeyWrapper wrapper_{"fake-kek"};
  std::unique_ptr<storage::RocksDbStorage> db_;
  std::unique_ptr<KekManager> kek_;
  std::unique_ptr<KeyRing> ring_;
  std::unique_ptr<crypto::HmacSha256> index_key_;
  std::unique_ptr<crypto::HmacSha256> fingerprint_key_;
  std::unique_ptr<commit::WritePath> audit_;
  std::unique_ptr<auth::PolicyHolder> policy_;
  std::unique_ptr<CvvCache> cvv_;
  std::unique_ptr<Vault> vault_;
  std::unique_ptr<storage::RocksDbBackupStore> store_;
  std::unique_ptr<Backups> backups_;
};

TEST_F(BackupsTest, BackupMatchesItsManifestAndVerifiesThroughTheHsm) {
  UseRealStore();
  for (const std::string& pan : testing::MakePans(25, 1)) {
    Card card;
    card.pan = crypto::SecretBytes(pan);
    ASSERT_THAT(vault_->Tokenize(Named("pos"), std::move(card), "m/pos"),
                IsOk());
  }
  auto b = backups_->Create(Named("admin"));
  ASSERT_THAT(b, IsOk());
  const BackupManifest& m = b->manifest;
  ASSERT_EQ(m.keks_size(), 1);
  EXPECT_EQ(m.keks(0).label(), "fake-kek");
  EXPECT_EQ(m.kek_generation(), 1u);
  EXPECT_THAT(m.data_key_versions(), ::testing::ElementsAre(1u));
  uint64_t tokens = 0;
  for (const auto& t : m.tables()) {
    if (t.table() == "tokens") tokens = t.records();
    EXPECT_EQ(t.sha256().size(), 32u) << t.table();
  }
  EXPECT_EQ(tokens, 25u);
  EXPECT_GE(m.audit_head_sequence(), 25u);

  auto v = backups_->Verify(Named("admin"), b->stored.id, true);
  ASSERT_THAT(v, IsOk());
  EXPECT_TRUE(v->ok) << ::testing::PrintToString(v->problems);
  EXPECT_EQ(v->records_opened, 25u);
  EXPECT_TRUE(v->chain.intact);
  EXPECT_EQ(v->chain.head_sequence, m.audit_head_sequence());
  // A sample opens fewer.
  VerifyOptions sample;
  sample.sample_records = 5;
  auto s = VerifyBackup(*store_, b->stored.id, wrapper_, sample);
  ASSERT_THAT(s, IsOk());
  EXPECT_TRUE(s->ok);
  EXPECT_EQ(s->records_opened, 5u);
  // Without its KEK the backup does not verify, and says which is missing.
  testing::FakeKeyWrapper other("another-kek");
  auto lost = VerifyBackup(*store_, b->stored.id, other, {});
  ASSERT_THAT(lost, IsOk());
  EXPECT_FALSE(lost->ok);
  EXPECT_THAT(::testing::PrintToString(lost->problems),
              HasSubstr("KEK \\\"fake-kek\\\""));
  EXPECT_EQ(Events(v1::BACKUP).size(), 1u);
  EXPECT_THAT(Events(v1::BACKUP)[0].detail(),
              HasSubstr("backup 1: audit head"));
}

TEST_F(BackupsTest, OnlyAdminsAndEveryCallIsRecorded) {
  UseRealStore();
  for (absl::string_view who : {"pos", "auditor", "stranger"}) {
    EXPECT_THAT(backups_->Create(Named(who)),
                StatusIs(absl::StatusCode::kPermissionDenied));
    EXPECT_THAT(backups_->List(Named(who)),
                StatusIs(absl::StatusCode::kPermissionDenied));
    EXPECT_THAT(backups_->Verify(Named(who), 1, false),
                StatusIs(absl::StatusCode::kPermissionDenied));
    EXPECT_THAT(backups_->Delete(Named(who), 1),
                StatusIs(absl::StatusCode::kPermissionDenied));
  }
  EXPECT_EQ(Events(v1::BACKUP_ADMIN).size() + Events(v1::BACKUP).size(), 12u);
  auto all = store_->List();
  ASSERT_THAT(all, IsOk());
  EXPECT_TRUE(all->empty());
  EXPECT_THAT(backups_->Verify(Named("admin"), 9, false),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(BackupsTest, FailedScheduledBackupsAreCountedAndRecorded) {
  FailingBackupStore failing;
  backups_ = *Backups::Create({.store = &failing,
                               .wrapper = &wrapper_,
                               .policy = policy_.get(),
                               .audit = audit_.get()},
                              Every(absl::Milliseconds(20)));
  ASSERT_TRUE(testing::Eventually(absl::Seconds(10),
                                  [&] { return backups_->failures() >= 2; }));
  backups_.reset();
  EXPECT_EQ(failing.attempts.load(),
            static_cast<int>(Events(v1::BACKUP).size()));
  const audit::AuditEvent e = Events(v1::BACKUP)[0];
  EXPECT_EQ(e.status_code(), static_cast<int>(absl::StatusCode::kUnavailable));
  EXPECT_THAT(e.detail(), HasSubstr("backup (schedule) failed"));
}

TEST_F(BackupsTest, ABackupAskedForWhileOneRunsIsRefusedNotQueued) {
  SlowBackupStore slow;
  backups_ = *Backups::Create({.store = &slow,
                               .wrapper = &wrapper_,
                               .policy = policy_.get(),
                               .audit = audit_.get()},
                              {});
  std::thread first(
      [&] { EXPECT_THAT(backups_->Create(Named("admin")), IsOk()); });
  slow.started.WaitForNotification();
  EXPECT_THAT(
      backups_->Create(Named("admin")),
      StatusIs(absl::StatusCode::kUnavailable, HasSubstr("being taken")));
  slow.release.Notify();
  first.join();
  EXPECT_EQ(backups_->failures(), 0u);
  EXPECT_EQ(backups_->taken(), 1u);
}

TEST_F(BackupsTest, AVerificationAskedForWhileOneRunsIsRefused) {
  SlowLookupStore slow;
  backups_ = *Backups::Create({.store = &slow,
                               .wrapper = &wrapper_,
                               .policy = policy_.get(),
                               .audit = audit_.get()},
                              {});
  std::thread first([&] {
    EXPECT_THAT(backups_->Verify(Named("admin"), 1, true),
                StatusIs(absl::StatusCode::kNotFound));
  });
  slow.started.WaitForNotification();
  EXPECT_THAT(
      backups_->Verify(Named("admin"), 1, true),
      StatusIs(absl::StatusCode::kUnavailable, HasSubstr("in progress")));
  slow.release.Notify();
  first.join();
  int refused = 0;
  for (const audit::AuditEvent& e : Events(v1::BACKUP_ADMIN)) {
    refused +=
        e.status_code() == static_cast<int>(absl::StatusCode::kUnavailable);
  }
  EXPECT_EQ(refused, 1);
}

TEST_F(BackupsTest, AScheduledBackupThatCannotStartCountsAsAFailure) {
  SlowBackupStore slow;
  backups_ = *Backups::Create({.store = &slow,
                               .wrapper = &wrapper_,
                               .policy = policy_.get(),
                               .audit = audit_.get()},
                              Every(absl::Milliseconds(300)));
  // An admin's backup (started well before the first tick) hangs; the
  // ticks that find it running are missed scheduled backups (an ALERT line
  // and the failure metric each).
  std::thread admin([&] { (void)backups_->Create(Named("admin")); });
  slow.started.WaitForNotification();
  ASSERT_TRUE(testing::Eventually(absl::Seconds(10),
                                  [&] { return backups_->failures() >= 2; }));
  slow.release.Notify();
  admin.join();
}

TEST_F(BackupsTest, KeepDeletesTheOldestAfterEachBackup) {
  Backups::Options keep_two;
  keep_two.keep = 2;
  UseRealStore(keep_two);
  for (int i = 0; i < 4; ++i) ASSERT_THAT(backups_->TakeBackup("test"), IsOk());
  auto all = store_->List();
  ASSERT_THAT(all, IsOk());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].id, 3u);
  EXPECT_EQ((*all)[1].id, 4u);
}

TEST_F(BackupsTest, ManifestDecodingRejectsDamage) {
  BackupManifest m;
  m.set_audit_head_sequence(7);
  auto key =
      *crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'm')));
  const std::string bytes = EncodeBackupManifest(
      m, [&](absl::string_view data) { return key->Compute(data); });
  EXPECT_EQ(static_cast<uint8_t>(bytes[0]), kBackupManifestFormatV1);
  EXPECT_THAT(DecodeBackupManifest(bytes), IsOk());
  EXPECT_TRUE(VerifyBackupManifestMac(bytes, *key));
  // An edited manifest, or one under another key, does not verify.
  BackupManifest edited = m;
  edited.set_audit_head_sequence(8);
  std::string forged = bytes.substr(0, 33) + edited.SerializeAsString();
  EXPECT_THAT(DecodeBackupManifest(forged), IsOk());
  EXPECT_FALSE(VerifyBackupManifestMac(forged, *key));
  auto other =
      *crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'o')));
  EXPECT_FALSE(VerifyBackupManifestMac(bytes, *other));
  EXPECT_THAT(DecodeBackupManifest(""), StatusIs(absl::StatusCode::kDataLoss));
  std::string bad = bytes;
  bad[0] = 0x02;
  EXPECT_THAT(DecodeBackupManifest(bad), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeBackupManifest(std::string(1, '\x01') +
                                   std::string(32, 'm') + "\xff\xff"),
              StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_EQ(KekGenerationOf("cardvault-kek"), 1u);
  EXPECT_EQ(KekGenerationOf("cardvault-kek/0000000a"), 10u);
  EXPECT_EQ(KekGenerationOf("cardvault-kek/zz"), 1u);
  EXPECT_EQ(KekGenerationOf("a/b/00000003"), 3u);
}

}  // namespace
}  // namespace cardvault::vault
