// A vault over a real RocksDB and audit chain, with storage faults on
// command and a clock the test moves.
#ifndef CARDVAULT_TESTS_SERVER_VAULT_VAULT_FIXTURE_H_
#define CARDVAULT_TESTS_SERVER_VAULT_VAULT_FIXTURE_H_

#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/rocksdb_storage.h"
#include "server/vault/index_entry.h"
#include "server/vault/kek_manager.h"
#include "server/vault/vault.h"
#include "tests/testing/fake_key_wrapper.h"
#include "tests/testing/fault_injecting_store.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::vault {

inline auth::Caller MakeCaller(absl::string_view name) {
  auth::Caller c;
  c.identity = absl::StrCat("spiffe://t/", name);
  c.certificate_serial = "0A1B";
  c.certificate_sha256 = std::string(64, 'f');
  c.peer = "ipv4:127.0.0.1:1234";
  c.request_id = absl::StrCat("req-", name);
  return c;
}
inline const auth::Caller kPos = MakeCaller("pos");
inline const auth::Caller kProcessor = MakeCaller("processor");
inline const auth::Caller kAuditor = MakeCaller("auditor");
inline const auth::Caller kStranger = MakeCaller("stranger");

class VaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        (std::filesystem::temp_directory_path() /
         absl::StrCat(
             "cardvault-vault-", getpid(), "-",
             ::testing::UnitTest::GetInstance()->current_test_info()->name()))
            .string();
    std::filesystem::remove_all(dir_);
    OpenStorage();
    store_ =
        std::make_unique<testing::FaultInjectingStore>(db_.get());
    audit_ = *commit::WritePath::Open(
        store_.get(), store_.get(),
        *crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'a'))),
        1, {});
    std::map<uint32_t, crypto::SecretBytes> keys;
    keys.emplace(1, crypto::SecretBytes(std::string(32, 'k')));
    ring_ = *KeyRing::FromKeys(std::move(keys));
    auth::PolicySpec& spec = spec_;
    spec.purposes = {"authorization", "refund"};
    spec.cvv_purposes = {"authorization"};
    spec.bindings = {
        {kPos.identity, {auth::Role::kTokenizer}, {"m1/pos", "m2/pos"}, {}, {}},
        {kProcessor.identity,
         {auth::Role::kDetokenizer},
         {},
         {"m1/pos"},
         {.per_second = 0, .per_day = 20}},
        {kAuditor.identity, {auth::Role::kAuditor}, {}, {}, {}}};
    policy_ =
        std::make_unique<auth::PolicyHolder>(*auth::AccessPolicy::Create(spec));

    index_key_ =
        *crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'i')));
    fingerprint_key_ =
        *crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'f')));
    cvv_cache_ = *CvvCache::Create({.ttl = absl::Minutes(15)});
    Reopen({});
  }
  // The vault's dependencies, for a second vault over the same state.
  Vault::Dependencies Deps() const {
    return {.records = store_.get(),
            .keys = ring_.get(),
            .index_key = index_key_.get(),
            .fingerprint_key = fingerprint_key_.get(),
            .cvv_cache = cvv_cache_.get(),
            .policy = policy_.get(),
            .audit = audit_.get()};
  }
  // Replaces the vault with one of `options` (same state), on the
  // fixture's clock unless `options` brings its own.
  void Reopen(Vault::Options options) {
    options.now = [this] {
      absl::MutexLock lock(&clock_mu_);
      return now_;
    };
    vault_ = *Vault::Create(Deps(), std::move(options));
  }
  // Puts `spec_` (as edited by the test) in force.
  void ApplyPolicy() { policy_->Replace(*auth::AccessPolicy::Create(spec_)); }
  absl::Time Now() {
    absl::MutexLock lock(&clock_mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&clock_mu_);
    now_ += d;
  }
  void OpenStorage() {
    storage::RocksDbStorage::Options options{.data_dir = dir_};
    options.expiry_of = StoredExpiry;
    options.now = [this] {
      absl::MutexLock lock(&clock_mu_);
      return now_;
    };
    db_ = *storage::RocksDbStorage::Open(options);
  }
  void TearDown() override {
    vault_.reset();
    audit_.reset();
    ring_.reset();
    kek_.reset();
    store_.reset();
    db_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Replaces the fixed ring with one over db_ that makes, wraps and rotates
  // keys through wrapper_ (the vault must be reopened after).
  void LoadRing(KeyRing::Options options) {
    if (kek_ == nullptr) {
      kek_ = *KekManager::Open(db_.get(), &wrapper_,
                               {.initial_label = "fake-kek"});
    }
    ring_ = *KeyRing::Load(kek_.get(), std::move(options));
  }

  static Card MakeCard(absl::string_view pan) {
    Card c;
    c.pan = crypto::SecretBytes(pan);
    c.exp_month = 12;
    c.exp_year = 2039;
    return c;
  }
  std::vector<audit::AuditEvent> Events() {
    std::vector<audit::AuditEvent> out;
    EXPECT_THAT(audit_->Scan(1,
                             [&](const audit::AuditEvent& e) {
                               out.push_back(e);
                               return true;
                             }),
                ::cardvault::testing::IsOk());
    return out;
  }
  size_t TokenCount() {
    size_t n = 0;
    for (const auto& e : Events())
      n += !e.token().empty() && e.event_type() == v1::TOKENIZE;
    return n;
  }

  std::string dir_;
  std::unique_ptr<storage::RocksDbStorage> db_;
  std::unique_ptr<testing::FaultInjectingStore> store_;
  std::unique_ptr<commit::WritePath> audit_;
  std::unique_ptr<KeyRing> ring_;
  // For tests whose ring makes keys (LoadRing): an in-memory "HSM" and the
  // KEK state in db_.
  testing::FakeKeyWrapper wrapper_;
  std::unique_ptr<KekManager> kek_;
  std::unique_ptr<crypto::HmacSha256> index_key_;
  std::unique_ptr<crypto::HmacSha256> fingerprint_key_;
  std::unique_ptr<CvvCache> cvv_cache_;
  auth::PolicySpec spec_;
  std::unique_ptr<auth::PolicyHolder> policy_;
  std::unique_ptr<Vault> vault_;
  absl::Mutex clock_mu_;
  absl::Time now_ ABSL_GUARDED_BY(clock_mu_) =
      absl::FromCivil(absl::CivilDay(2026, 11, 25), absl::UTCTimeZone());
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_TESTS_SERVER_VAULT_VAULT_FIXTURE_H_
