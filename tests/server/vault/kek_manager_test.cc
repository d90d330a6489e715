#include "server/vault/kek_manager.h"

#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/rocksdb_storage.h"
#include "server/vault/wrapped_keys.h"
#include "tests/testing/fake_key_wrapper.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::vault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kKek[] = "fake-kek";
constexpr char kNextKek[] = "fake-kek/00000002";

class KekManagerTest : public ::testing::Test {
 protected:
  void SetUp() override { Fresh(); }
  void TearDown() override {
    db_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Fresh() {
    db_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
    dir_ = ::testing::TempDir() + "kek_manager_test_" +
           std::to_string(::getpid()) + "_" + std::to_string(++fresh_);
    db_ = *storage::RocksDbStorage::Open({.data_dir = dir_});
    wrapper_ = std::make_unique<testing::FakeKeyWrapper>(kKek);
  }
  absl::StatusOr<std::unique_ptr<KekManager>> Open(
      KekManager::OpenReport* report = nullptr) {
    return KekManager::Open(db_.get(), wrapper_.get(), {.initial_label = kKek},
                            report);
  }
  // Three data keys and an HMAC key, as a vault has them; their bytes.
  std::map<std::string, std::string> MakeKeys(const KekManager& kek) {
    std::map<std::string, std::string> out;
    for (uint32_t v = 1; v <= 3; ++v) {
      auto k = CreateStoredKey(&kek, kDataKeyPrefix, v, absl::Now(),
                               absl::InfiniteFuture());
      EXPECT_THAT(k, IsOk());
      out[WrappedKeyId(kDataKeyPrefix, v)] = std::string(k->key.view());
    }
    auto mac = CreateStoredKey(&kek, kAuditKeyPrefix, 1, absl::Now(),
                               absl::InfiniteFuture());
    EXPECT_THAT(mac, IsOk());
    out[WrappedKeyId(kAuditKeyPrefix, 1)] = std::string(mac->key.view());
    return out;
  }
  // Every stored key, unwrapped now, by id.
  std::map<std::string, std::string> LoadKeys(const KekManager& kek) {
    std::map<std::string, std::string> out;
    for (absl::string_view prefix : {kDataKeyPrefix, kAuditKeyPrefix}) {
      auto keys = LoadStoredKeys(&kek, prefix);
      EXPECT_THAT(keys, IsOk());
      if (!keys.ok()) continue;
      for (const auto& [v, k] : *keys) {
        out[WrappedKeyId(prefix, v)] = std::string(k.key.view());
      }
    }
    return out;
  }
  // The KEK label each stored key names.
  std::set<std::string> LabelsInUse() {
    std::set<std::string> out;
    auto all = db_->ListKeys();
    EXPECT_THAT(all, IsOk());
    if (!all.ok()) return out;
    for (const auto& [id, record] : *all) {
      if (id == kKekStateId) continue;
      auto label = KekLabelOf(id, record);
      EXPECT_THAT(label, IsOk());
      if (label.ok() && label->has_value()) out.insert(**label);
    }
    return out;
  }

  int fresh_ = 0;
  std::string dir_;
  std::unique_ptr<storage::RocksDbStorage> db_;
  std::unique_ptr<testing::FakeKeyWrapper> wrapper_;
};

TEST_F(KekManagerTest, NewVaultRefusesMissingKekUnlessAllowedToCreateIt) {
  wrapper_ = std::make_unique<testing::FakeKeyWrapper>("");
  EXPECT_THAT(Open(), StatusIs(absl::StatusCode::kNotFound));
  KekManager::OpenReport report;
  auto kek = KekManager::Open(
      db_.get(), wrapper_.get(),
      {.initial_label = kKek, .create_if_missing = true}, &report);
  ASSERT_THAT(kek, IsOk());
  EXPECT_TRUE(report.created_kek);
  EXPECT_EQ(report.kek_label, kKek);
  auto state = (*kek)->State();
  ASSERT_THAT(state, IsOk());
  EXPECT_EQ(state->generation, 1u);
  EXPECT_EQ(state->phase, KekPhase::kSteady);
}

TEST_F(KekManagerTest, ExistingVaultNeverCreatesAKekSilently) {
  ASSERT_THAT(Open(), IsOk());
  ASSERT_THAT(wrapper_->DestroyKek(kKek), IsOk());
  EXPECT_THAT(
      KekManager::Open(db_.get(), wrapper_.get(),
                       {.initial_label = kKek, .create_if_missing = true}),
      StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(KekManagerTest, RotationRewrapsEveryKeyAndDestroysTheOldKek) {
  auto kek = Open();
  ASSERT_THAT(kek, IsOk());
  const std::map<std::string, std::string> keys = MakeKeys(**kek);
  EXPECT_THAT(LabelsInUse(), ElementsAre(kKek));

  auto label = (*kek)->Rotate();
  ASSERT_THAT(label, IsOk());
  EXPECT_EQ(*label, kNextKek);
  EXPECT_THAT(wrapper_->keks(), ElementsAre(kNextKek));
  EXPECT_THAT(LabelsInUse(), ElementsAre(kNextKek));
  EXPECT_EQ(LoadKeys(**kek), keys);
  auto state = (*kek)->State();
  EXPECT_EQ(state->generation, 2u);
  EXPECT_EQ(state->phase, KekPhase::kSteady);

  // And again: generation 3, keys made after the first rotation included.
  auto more = CreateStoredKey(kek->get(), kDataKeyPrefix, 4, absl::Now(),
                              absl::InfiniteFuture());
  ASSERT_THAT(more, IsOk());
  ASSERT_THAT((*kek)->Rotate(), IsOk());
  EXPECT_THAT(wrapper_->keks(), ElementsAre("fake-kek/00000003"));
  EXPECT_THAT(LabelsInUse(), ElementsAre("fake-kek/00000003"));
  EXPECT_EQ(LoadKeys(**kek).size(), keys.size() + 1);
}

TEST_F(KekManagerTest, DestroyedKeysStayDestroyedAcrossRotation) {
  auto kek = Open();
  ASSERT_THAT(kek, IsOk());
  MakeKeys(**kek);
  const std::string id = WrappedKeyId(kDataKeyPrefix, 1);
  ASSERT_THAT(
      db_->ReplaceKey(id, *db_->GetKey(id), DestroyedKeyRecord(1, absl::Now())),
      IsOk());
  ASSERT_THAT((*kek)->Rotate(), IsOk());
  auto stored = LoadStoredKeys(kek->get(), kDataKeyPrefix);
  ASSERT_THAT(stored, IsOk());
  EXPECT_TRUE(stored->at(1).destroyed);
  EXPECT_FALSE(stored->at(2).destroyed);
}

// A crash (here: the HSM failing every call from the n-th on, then a
// restart) at every step of a rotation leaves a state that start-up either
// completes or rolls back, with every key intact and one KEK in the HSM.
TEST_F(KekManagerTest, CrashAtEveryStepIsCompletedOrRolledBackOnStart) {
  bool completed_without_crash = false;
  int rolled_back = 0, resumed = 0;
  for (int64_t n = 0; !completed_without_crash; ++n) {
    ASSERT_LT(n, 100) << "rotation never completed";
    Fresh();
    std::map<std::string, std::string> keys;
    {
      auto kek = Open();
      ASSERT_THAT(kek, IsOk());
      keys = MakeKeys(**kek);
      wrapper_->FailFromCall(n);
      completed_without_crash = (*kek)->Rotate().ok();
      wrapper_->FailFromCall(-1);
    }
    KekManager::OpenReport report;
    auto kek = Open(&report);
    ASSERT_THAT(kek, IsOk()) << "crash at HSM call " << n;
    auto state = (*kek)->State();
    ASSERT_THAT(state, IsOk());
    EXPECT_EQ(state->phase, KekPhase::kSteady);
    // Exactly one KEK remains, it is the current one, and it wraps all.
    ASSERT_EQ(wrapper_->keks().size(), 1u) << "crash at HSM call " << n;
    EXPECT_EQ(*wrapper_->keks().begin(), state->current);
    EXPECT_THAT(LabelsInUse(), ElementsAre(state->current));
    EXPECT_EQ(LoadKeys(**kek), keys) << "crash at HSM call " << n;
    if (!completed_without_crash) {
      EXPECT_EQ(state->current, report.resumed ? kNextKek : kKek)
          << "crash at HSM call " << n;
    }
    rolled_back += report.rolled_back;
    resumed += report.resumed;
  }
  // Crashes after the state named the new KEK were completed on start
  // (one in rewrapping, one in retiring, at least).
  EXPECT_GE(resumed, 2);
  EXPECT_EQ(rolled_back, 0);
}

// The one crash point between two HSM calls: the new KEK made, the state
// not yet naming it. Start-up destroys the unused KEK (rolled back).
TEST_F(KekManagerTest, KekLeftByACrashBeforeTheStateNamedItIsRolledBack) {
  std::map<std::string, std::string> keys;
  {
    auto kek = Open();
    ASSERT_THAT(kek, IsOk());
    keys = MakeKeys(**kek);
    ASSERT_THAT(wrapper_->CreateKek(kNextKek), IsOk());  // then "kill -9"
  }
  KekManager::OpenReport report;
  auto kek = Open(&report);
  ASSERT_THAT(kek, IsOk());
  EXPECT_TRUE(report.rolled_back);
  EXPECT_FALSE(report.resumed);
  EXPECT_THAT(wrapper_->keks(), ElementsAre(kKek));
  EXPECT_EQ(LoadKeys(**kek), keys);
  // A later rotation makes it afresh.
  ASSERT_THAT((*kek)->Rotate(), IsOk());
  EXPECT_THAT(wrapper_->keks(), ElementsAre(kNextKek));
  EXPECT_EQ(LoadKeys(**kek), keys);
}

TEST_F(KekManagerTest, KeysMadeMidRotationAreWrappedUnderTheNewKek) {
  auto kek = Open();
  ASSERT_THAT(kek, IsOk());
  auto keys = MakeKeys(**kek);
  // Stop the rotation at its first rewrap: the state names the new KEK.
  wrapper_->FailFromCall(2);  // CreateKek, CheckKek, then RewrapKey fails
  EXPECT_THAT((*kek)->Rotate(), StatusIs(absl::StatusCode::kUnavailable));
  wrapper_->FailFromCall(-1);
  ASSERT_EQ((*kek)->State()->phase, KekPhase::kRewrapping);
  auto made = CreateStoredKey(kek->get(), kDataKeyPrefix, 9, absl::Now(),
                              absl::InfiniteFuture());
  ASSERT_THAT(made, IsOk());
  EXPECT_THAT(*KekLabelOf(WrappedKeyId(kDataKeyPrefix, 9), made->record),
              ::testing::Optional(std::string(kNextKek)));
  // Every key loads mid-rotation (both KEKs named), and after completion.
  EXPECT_EQ(LoadKeys(**kek).size(), keys.size() + 1);
  ASSERT_THAT((*kek)->Rotate(), IsOk());
  EXPECT_THAT(LabelsInUse(), ElementsAre(kNextKek));
  EXPECT_EQ(LoadKeys(**kek).size(), keys.size() + 1);
}

TEST_F(KekManagerTest, StateRecordRoundTripsAndRejectsDamage) {
  KekState s;
  s.generation = 7;
  s.phase = KekPhase::kRetiring;
  s.current_since = absl::FromUnixMillis(1700000000123);
  s.phase_started = absl::FromUnixMillis(1700000000456);
  s.current = "kek/00000007";
  s.other = "kek/00000006";
  const std::string record = EncodeKekState(s);
  auto back = DecodeKekState(record);
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(back->generation, 7u);
  EXPECT_EQ(back->phase, KekPhase::kRetiring);
  EXPECT_EQ(back->current_since, s.current_since);
  EXPECT_EQ(back->current, s.current);
  EXPECT_EQ(back->other, s.other);
  for (size_t cut : {size_t{0}, size_t{5}, record.size() - 1}) {
    EXPECT_THAT(DecodeKekState(record.substr(0, cut)),
                StatusIs(absl::StatusCode::kDataLoss));
  }
  std::string bad_phase = record;
  bad_phase[5] = 9;
  EXPECT_THAT(DecodeKekState(bad_phase),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("phase")));
}

TEST_F(KekManagerTest, RetainedStateRecordRoundTripsAndRejectsDamage) {
  KekState s;
  s.generation = 3;
  s.current = "kek/00000003";
  s.retained = {{1, "kek"}, {2, "kek/00000002"}};
  const std::string record = EncodeKekState(s);
  EXPECT_EQ(static_cast<uint8_t>(record[0]), kKekStateFormatV2);
  auto back = DecodeKekState(record);
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(back->retained, s.retained);
  for (size_t cut = 25; cut < record.size(); ++cut) {
    EXPECT_THAT(DecodeKekState(record.substr(0, cut)),
                StatusIs(absl::StatusCode::kDataLoss))
        << cut;
  }
  EXPECT_THAT(DecodeKekState(record + "x"),
              StatusIs(absl::StatusCode::kDataLoss));
  // Without retained KEKs the record stays in format 1, byte for byte.
  s.retained.clear();
  EXPECT_EQ(static_cast<uint8_t>(EncodeKekState(s)[0]), kKekStateFormatV1);
}

TEST_F(KekManagerTest, RotationWithBackupsRetainsTheOldKekUntilDestroyed) {
  auto kek = KekManager::Open(db_.get(), wrapper_.get(),
                              {.initial_label = kKek, .retain_old_keks = true});
  ASSERT_THAT(kek, IsOk());
  const std::map<std::string, std::string> keys = MakeKeys(**kek);
  ASSERT_THAT((*kek)->Rotate(), IsOk());
  // The old KEK stays in the HSM; nothing live is wrapped under it.
  EXPECT_THAT(wrapper_->keks(), ElementsAre(kKek, kNextKek));
  EXPECT_THAT(LabelsInUse(), ElementsAre(kNextKek));
  EXPECT_EQ(LoadKeys(**kek), keys);
  auto state = (*kek)->State();
  ASSERT_THAT(state, IsOk());
  EXPECT_EQ(state->phase, KekPhase::kSteady);
  ASSERT_EQ(state->retained.size(), 1u);
  EXPECT_EQ(state->retained[0].first, 1u);
  EXPECT_EQ(state->retained[0].second, kKek);
  // A restart keeps it too (it is not the orphan of a crashed rotation).
  kek = KekManager::Open(db_.get(), wrapper_.get(),
                         {.initial_label = kKek, .retain_old_keks = true});
  ASSERT_THAT(kek, IsOk());
  EXPECT_THAT(wrapper_->keks(), ElementsAre(kKek, kNextKek));

  EXPECT_THAT((*kek)->DestroyRetained(2),
              StatusIs(absl::StatusCode::kNotFound));
  auto destroyed = (*kek)->DestroyRetained(1);
  ASSERT_THAT(destroyed, IsOk());
  EXPECT_EQ(*destroyed, kKek);
  EXPECT_THAT(wrapper_->keks(), ElementsAre(kNextKek));
  EXPECT_TRUE((*kek)->State()->retained.empty());
  EXPECT_EQ(LoadKeys(**kek), keys);
  // Later rotations add to what is retained.
  ASSERT_THAT((*kek)->Rotate(), IsOk());
  ASSERT_THAT((*kek)->Rotate(), IsOk());
  EXPECT_EQ((*kek)->State()->retained.size(), 2u);
  EXPECT_EQ(LoadKeys(**kek), keys);
}

TEST_F(KekManagerTest, AfterARestoreNewerKeksAreAdoptedNotDestroyed) {
  auto kek = KekManager::Open(db_.get(), wrapper_.get(),
                              {.initial_label = kKek, .retain_old_keks = true});
  ASSERT_THAT(kek, IsOk());
  const std::map<std::string, std::string> keys = MakeKeys(**kek);
  // What a restored store looks like: its state names generation 1 while
  // the vault rotated twice after the backup (the HSM holds 2 and 3).
  ASSERT_THAT(wrapper_->CreateKek(kNextKek), IsOk());
  ASSERT_THAT(wrapper_->CreateKek("fake-kek/00000003"), IsOk());
  kek->reset();
  KekManager::OpenReport report;
  kek = KekManager::Open(db_.get(), wrapper_.get(),
                         {.initial_label = kKek,
                          .retain_old_keks = true,
                          .adopt_newer_keks = true},
                         &report);
  ASSERT_THAT(kek, IsOk());
  EXPECT_EQ(report.adopted, 2u);
  EXPECT_EQ(report.kek_label, "fake-kek/00000003");
  EXPECT_THAT(LabelsInUse(), ElementsAre("fake-kek/00000003"));
  EXPECT_THAT(wrapper_->keks(),
              ElementsAre(kKek, kNextKek, "fake-kek/00000003"));
  EXPECT_EQ(LoadKeys(**kek), keys);
  EXPECT_EQ((*kek)->State()->retained.size(), 2u);
}

TEST_F(KekManagerTest, AfterARestoreADestroyedGenerationIsSkipped) {
  auto kek = KekManager::Open(db_.get(), wrapper_.get(),
                              {.initial_label = kKek, .retain_old_keks = true});
  ASSERT_THAT(kek, IsOk());
  const std::map<std::string, std::string> keys = MakeKeys(**kek);
  // The vault rotated to 2, then 3, and generation 2 was destroyed.
  ASSERT_THAT(wrapper_->CreateKek("fake-kek/00000003"), IsOk());
  kek->reset();
  KekManager::OpenReport report;
  kek = KekManager::Open(db_.get(), wrapper_.get(),
                         {.initial_label = kKek,
                          .retain_old_keks = true,
                          .adopt_newer_keks = true},
                         &report);
  ASSERT_THAT(kek, IsOk());
  EXPECT_EQ(report.kek_label, "fake-kek/00000003");
  auto state = (*kek)->State();
  ASSERT_THAT(state, IsOk());
  EXPECT_EQ(state->generation, 3u);
  ASSERT_EQ(state->retained.size(), 1u);
  EXPECT_EQ(state->retained[0].first, 1u);
  EXPECT_EQ(LoadKeys(**kek), keys);
  // A later start does not take generation 4's absence, or 3, for a
  // crashed rotation's leftover.
  kek = KekManager::Open(db_.get(), wrapper_.get(),
                         {.initial_label = kKek, .retain_old_keks = true});
  ASSERT_THAT(kek, IsOk());
  EXPECT_THAT(wrapper_->keks(), ElementsAre(kKek, "fake-kek/00000003"));
  ASSERT_THAT((*kek)->Rotate(), IsOk());
  EXPECT_EQ((*kek)->State()->generation, 4u);
}

TEST_F(KekManagerTest, WithBackupsAnUnnamedNextKekIsKeptAndUsedNext) {
  auto kek = KekManager::Open(db_.get(), wrapper_.get(),
                              {.initial_label = kKek, .retain_old_keks = true});
  ASSERT_THAT(kek, IsOk());
  const std::map<std::string, std::string> keys = MakeKeys(**kek);
  // A KEK of the next generation the state does not name: a crashed
  // rotation's, or one another timeline of this vault rotated to.
  ASSERT_THAT(wrapper_->CreateKek(kNextKek), IsOk());
  KekManager::OpenReport report;
  kek = KekManager::Open(db_.get(), wrapper_.get(),
                         {.initial_label = kKek, .retain_old_keks = true},
                         &report);
  ASSERT_THAT(kek, IsOk());
  EXPECT_FALSE(report.rolled_back);
  EXPECT_THAT(wrapper_->keks(), ElementsAre(kKek, kNextKek));
  auto label = (*kek)->Rotate();
  ASSERT_THAT(label, IsOk());
  EXPECT_EQ(*label, kNextKek);
  EXPECT_EQ(LoadKeys(**kek), keys);
}

TEST_F(KekManagerTest, ReadOnlyOpenWritesNothingAndNamesAMissingKek) {
  ASSERT_THAT(Open(), IsOk());
  auto before = db_->ListKeys();
  ASSERT_THAT(before, IsOk());
  ASSERT_THAT(wrapper_->CreateKek(kNextKek), IsOk());  // an orphan
  ASSERT_THAT(KekManager::OpenReadOnly(db_.get(), wrapper_.get(), {}), IsOk());
  EXPECT_THAT(wrapper_->keks(), ElementsAre(kKek, kNextKek));
  EXPECT_EQ(*db_->ListKeys(), *before);
  ASSERT_THAT(wrapper_->DestroyKek(kKek), IsOk());
  EXPECT_THAT(KekManager::OpenReadOnly(db_.get(), wrapper_.get(), {}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("\"fake-kek\"")));
}

}  // namespace
}  // namespace cardvault::vault
