// Data-key rotation, re-encryption and destruction on a real RocksDB and
// audit chain, with keys made by an in-memory stand-in for the HSM.
#include <atomic>
#include <thread>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/vault/reencryptor.h"
#include "server/vault/vault.h"
#include "tests/server/vault/vault_fixture.h"
#include "tests/testing/fake_key_wrapper.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_cards.h"

namespace cardvault::vault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;

class KeyRotationTest : public VaultTest {
 protected:
  void SetUp() override {
    VaultTest::SetUp();
    // Detokenizing thousands of cards back is this test's point.
    spec_.bindings[1].detokenize_limit = {};
    ApplyPolicy();
  }
  // A ring over the fixture's store that makes new keys through the fake
  // wrapper and rotates after `max_encryptions`.
  void UseRotatingRing(uint64_t max_encryptions) {
    vault_.reset();
    KeyRing::Options options;
    options.max_encryptions_per_key = max_encryptions;
    options.now = [this] { return Now(); };
    LoadRing(options);
    Reopen({});
  }
  std::vector<std::pair<std::string, std::string>> TokenizeMany(int n,
                                                                uint64_t seed) {
    const std::vector<std::string> pans = testing::MakePans(n, seed);
    std::vector<std::pair<std::string, std::string>> out;
    for (int start = 0; start < n; start += 500) {
      std::vector<TokenizeRequest> batch;
      for (int i = start; i < std::min(n, start + 500); ++i) {
        TokenizeRequest r;
        r.card = MakeCard(pans[i]);
        batch.push_back(std::move(r));
      }
      auto results = vault_->TokenizeBatch(kPos, std::move(batch));
      EXPECT_THAT(results, IsOk());
      for (int i = start; i < std::min(n, start + 500); ++i) {
        const auto& r = (*results)[i - start];
        EXPECT_THAT(r, IsOk());
        if (r.ok()) out.emplace_back(r->token, pans[i]);
      }
    }
    return out;
  }
  void ExpectAllDetokenize(
      const std::vector<std::pair<std::string, std::string>>& tokens) {
    std::vector<DetokenizeRequest> requests;
    for (const auto& [token, pan] : tokens) {
      requests.push_back({token, "authorization"});
    }
    for (size_t start = 0; start < requests.size(); start += 1000) {
      std::vector<DetokenizeRequest> part(
          requests.begin() + start,
          requests.begin() + std::min(requests.size(), start + 1000));
      auto cards = vault_->DetokenizeBatch(kProcessor, part);
      ASSERT_THAT(cards, IsOk());
      for (size_t i = 0; i < part.size(); ++i) {
        ASSERT_THAT((*cards)[i], IsOk()) << part[i].token;
        ASSERT_EQ((*cards)[i]->card.pan.view(), tokens[start + i].second);
      }
    }
  }
  std::map<uint32_t, KeyState> States() {
    std::map<uint32_t, KeyState> out;
    for (const KeyInfo& k : ring_->Inventory()) out[k.version] = k.state;
    return out;
  }
  std::map<uint32_t, uint64_t> RecordsByVersion() {
    std::map<uint32_t, uint64_t> out;
    const auto all = db_->Scan(storage::Table::kTokens, "", 1 << 20);
    EXPECT_THAT(all, IsOk());
    for (const auto& [token, record] : *all) {
      auto h = ParseRecordHeader(record);
      EXPECT_THAT(h, IsOk());
      if (h.ok()) ++out[h->key_version];
    }
    return out;
  }
};

// Two rings on one store, as two nodes: what one does to the keys the other
// learns, and the GCM bound holds for both together.
class TwoNodeKeyRingTest : public KeyRotationTest {
 protected:
  void SetUp() override {
    KeyRotationTest::SetUp();
    reservations_ = *coordination::UseReservations::Create(db_.get(), {});
    KeyRing::Options options;
    options.now = [this] { return Now(); };
    options.reservations = reservations_.get();
    options.reservation_block = 100;
    vault_.reset();
    LoadRing(options);
    other_ = *KeyRing::Load(kek_.get(), options);
  }
  std::unique_ptr<coordination::UseReservations> reservations_;
  std::unique_ptr<KeyRing> other_;
};

TEST_F(TwoNodeKeyRingTest, AKeyMadeByOneNodeIsUsedByTheOther) {
  ASSERT_EQ(other_->primary_version(), 1u);
  auto rotated = ring_->Rotate();
  ASSERT_THAT(rotated, IsOk());
  ASSERT_EQ(*rotated, 2u);
  // A record sealed under the new key opens on the other node at once.
  EXPECT_THAT(other_->Get(2), IsOk());
  EXPECT_EQ(other_->primary_version(), 2u);
  // A rotation the other node also meant to make lands on the same key.
  bool made_here = false;
  ASSERT_THAT(ring_->Rotate(&made_here),
              ::cardvault::testing::IsOkAndHolds(3u));
  EXPECT_TRUE(made_here);
  EXPECT_THAT(other_->Rotate(&made_here),
              ::cardvault::testing::IsOkAndHolds(3u));
  // The other node says it made nothing, so that it records nothing made.
  EXPECT_FALSE(made_here);
  EXPECT_EQ(ring_->primary_version(), 3u);
  EXPECT_EQ(other_->primary_version(), 3u);
  EXPECT_EQ(other_->Inventory().size(), 3u);
  // A version nobody made stays NOT_FOUND.
  EXPECT_THAT(other_->Get(9), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(TwoNodeKeyRingTest, ARotationAnotherNodeMadeFirstIsNotRecordedAsOwn) {
  ASSERT_THAT(ring_->Rotate(), ::cardvault::testing::IsOkAndHolds(2u));
  // The other node, not yet refreshed, is asked to rotate on demand.
  Vault::Dependencies deps = Deps();
  deps.keys = other_.get();
  Vault::Options options;
  options.now = [this] { return Now(); };
  auto other_vault = *Vault::Create(deps, std::move(options));
  ASSERT_THAT(other_vault->RotateDataKey(),
              ::cardvault::testing::IsOkAndHolds(2u));
  std::vector<std::string> details;
  for (const audit::AuditEvent& e : Events()) {
    if (e.event_type() == v1::KEY_EVENT) details.push_back(e.detail());
  }
  ASSERT_FALSE(details.empty());
  EXPECT_THAT(details.back(),
              ::testing::HasSubstr("just made primary by another node"));
  EXPECT_THAT(details.back(),
              ::testing::Not(::testing::HasSubstr("generated in the HSM")));
}

TEST_F(TwoNodeKeyRingTest, BothNodesTogetherStayUnderTheGcmBound) {
  // 250 encryptions left under dek/1 for both nodes together.
  ASSERT_THAT(reservations_->Reserve(EncryptionsCounterId(1), 1,
                                     kMaxGcmEncryptionsPerKey - 250,
                                     kMaxGcmEncryptionsPerKey),
              IsOk());
  std::atomic<uint64_t> leased{0};
  std::vector<std::thread> nodes;
  for (const KeyRing* ring : {ring_.get(), other_.get()}) {
    nodes.emplace_back([&, ring] {
      for (;;) {
        absl::StatusOr<KeyRing::Lease> l = ring->LeasePrimary(3);
        if (!l.ok()) {
          EXPECT_THAT(l.status(), StatusIs(absl::StatusCode::kUnavailable,
                                           HasSubstr("encryption limit")));
          return;
        }
        ASSERT_EQ(l->version(), 1u);
        leased += 3;
      }
    });
  }
  for (std::thread& t : nodes) t.join();
  EXPECT_LE(leased.load(), 250u);
  // Blocks of 100 at most leave under one block's tail per node unused.
  EXPECT_GE(leased.load(), 250u - 2 * 3);
  EXPECT_THAT(reservations_->Reserved(EncryptionsCounterId(1)),
              ::cardvault::testing::IsOkAndHolds(kMaxGcmEncryptionsPerKey));
}

TEST_F(KeyRotationTest,
       AKeyRetiresOnlyAfterAPassBegunAGraceAfterItsReplacement) {
  vault_.reset();
  KeyRing::Options options;
  options.now = [this] { return Now(); };
  options.retire_grace = absl::Seconds(30);
  LoadRing(options);
  ASSERT_THAT(ring_->Rotate(), IsOk());
  // A pass right after the rotation finds nothing under dek/1, but a node
  // that has not refreshed yet may still seal under it: not retired.
  ring_->RecordPass({{2, 0}}, Now());
  EXPECT_EQ(States()[1], KeyState::kDecryptOnly);
  EXPECT_THAT(ring_->Destroy(1),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  ring_->RecordPass({{2, 0}}, Now() + absl::Seconds(31));
  EXPECT_EQ(States()[1], KeyState::kRetired);
  EXPECT_THAT(ring_->Destroy(1), IsOk());
}

TEST_F(KeyRotationTest, ARingThatCannotRefreshStopsSealing) {
  vault_.reset();
  KeyRing::Options options;
  options.now = [this] { return Now(); };
  options.refresh_interval = absl::Hours(1);  // the thread never runs here
  options.retire_grace = absl::Hours(3);
  LoadRing(options);
  EXPECT_THAT(ring_->LeasePrimary(), IsOk());
  Advance(absl::Hours(2) + absl::Seconds(1));
  EXPECT_THAT(ring_->LeasePrimary(),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("not read")));
  ASSERT_THAT(ring_->Refresh(), IsOk());
  EXPECT_THAT(ring_->LeasePrimary(), IsOk());
}

TEST_F(TwoNodeKeyRingTest, AKeyDestroyedByOneNodeIsDroppedByTheOther) {
  ASSERT_THAT(ring_->Rotate(), IsOk());
  ASSERT_THAT(other_->Refresh(), IsOk());
  ASSERT_THAT(other_->Get(1), IsOk());
  ring_->RecordPass({{2, 0}});  // no record left under dek/1
  ASSERT_THAT(ring_->Destroy(1), IsOk());
  ASSERT_THAT(other_->Refresh(), IsOk());
  EXPECT_THAT(other_->Get(1), StatusIs(absl::StatusCode::kNotFound));
  for (const KeyInfo& k : other_->Inventory()) {
    if (k.version == 1) {
      EXPECT_EQ(k.state, KeyState::kDestroyed);
    }
  }
}

TEST_F(KeyRotationTest, UseLimitRotatesAndReencryptionLetsOldKeysBeDestroyed) {
  UseRotatingRing(1000);
  const auto tokens = TokenizeMany(5000, 5);
  ASSERT_EQ(tokens.size(), 5000u);
  // 1,000 encryptions per key: versions 1 to 5, each full.
  const std::vector<KeyInfo> before = ring_->Inventory();
  ASSERT_GE(before.size(), 5u);
  for (const KeyInfo& k : before) {
    EXPECT_LE(k.encryptions, 1000u) << k.id;
    EXPECT_EQ(k.algorithm, "AES-256-GCM");
    EXPECT_LT(k.created, k.cryptoperiod_end);
  }
  EXPECT_EQ(RecordsByVersion(),
            (std::map<uint32_t, uint64_t>{
                {1, 1000}, {2, 1000}, {3, 1000}, {4, 1000}, {5, 1000}}));
  ExpectAllDetokenize(tokens);
  // Old keys still hold records: none may be destroyed yet.
  EXPECT_THAT(vault_->DestroyDataKey(1),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(vault_->DestroyDataKey(ring_->primary_version()),
              StatusIs(absl::StatusCode::kFailedPrecondition));

  auto job = *Reencryptor::Create(store_.get(), ring_.get(), audit_.get(),
                                  {.chunk_records = 300});
  auto pass = job->RunPass();
  ASSERT_THAT(pass, IsOk());
  const uint32_t primary = ring_->primary_version();
  EXPECT_EQ(pass->scanned, 5000u);
  EXPECT_EQ(pass->reencrypted, 5000u - 1000u * (primary == 5));
  EXPECT_EQ(RecordsByVersion(),
            (std::map<uint32_t, uint64_t>{{primary, 5000}}));
  EXPECT_EQ(job->pending(), 0u);
  for (const auto& [version, state] : States()) {
    EXPECT_EQ(state,
              version == primary ? KeyState::kActive : KeyState::kRetired)
        << version;
  }
  for (uint32_t v = 1; v < primary; ++v) {
    ASSERT_THAT(vault_->DestroyDataKey(v), IsOk()) << v;
    EXPECT_THAT(ring_->Get(v), StatusIs(absl::StatusCode::kNotFound));
  }
  ExpectAllDetokenize(tokens);

  // After a restart: destroyed keys stay destroyed, counts are durable.
  vault_.reset();
  LoadRing({});
  Reopen({});
  for (const KeyInfo& k : ring_->Inventory()) {
    if (k.version < primary) {
      EXPECT_EQ(k.state, KeyState::kDestroyed) << k.id;
      EXPECT_GE(k.encryptions, 1000u) << k.id;
    }
  }
  ExpectAllDetokenize(tokens);
  // Every step is in the audit trail.
  int rotations = 0, reencryptions = 0, destructions = 0;
  for (const auto& e : Events()) {
    if (e.event_type() != v1::KEY_EVENT) continue;
    rotations += absl::StartsWith(e.detail(), "rotated data keys");
    reencryptions += absl::StartsWith(e.detail(), "re-encrypted");
    destructions += absl::StartsWith(e.detail(), "destroyed data key");
  }
  EXPECT_EQ(rotations, static_cast<int>(primary) - 1);
  EXPECT_GE(reencryptions, 5000 / 300);
  EXPECT_EQ(destructions, static_cast<int>(primary) - 1);
}

TEST_F(KeyRotationTest, ReencryptionRunsAlongsideTrafficAndDeletes) {
  UseRotatingRing(200);
  auto tokens = TokenizeMany(1000, 6);
  auto job = *Reencryptor::Create(store_.get(), ring_.get(), audit_.get(),
                                  {.chunk_records = 50});
  std::atomic<bool> stop{false};
  std::vector<std::pair<std::string, std::string>> more;
  std::thread traffic([&] {
    const std::vector<std::string> pans = testing::MakePans(400, 7);
    for (size_t i = 0; i < pans.size() && !stop; ++i) {
      auto t = vault_->Tokenize(kPos, MakeCard(pans[i]));
      if (t.ok()) more.emplace_back(t->token, pans[i]);
      if (i % 4 == 0) {  // and delete some old ones while they are moved
        ASSERT_THAT(vault_->DeleteToken(kPos, tokens[i].first), IsOk());
      }
    }
  });
  ASSERT_THAT(job->RunPass(), IsOk());
  stop = true;
  traffic.join();
  // A second pass picks up what traffic wrote under keys rotated meanwhile.
  auto pass = job->RunPass();
  ASSERT_THAT(pass, IsOk());
  const uint32_t primary = ring_->primary_version();
  EXPECT_EQ(RecordsByVersion().size(), 1u);
  EXPECT_EQ(RecordsByVersion().begin()->first, primary);
  std::vector<std::pair<std::string, std::string>> live;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i % 4 != 0 || i >= 400) live.push_back(tokens[i]);
  }
  live.insert(live.end(), more.begin(), more.end());
  ExpectAllDetokenize(live);
}

TEST_F(KeyRotationTest, OnDemandRotationAndCryptoperiod) {
  vault_.reset();
  KeyRing::Options options;
  options.cryptoperiod = absl::Hours(24 * 30);
  options.now = [this] { return Now(); };
  LoadRing(options);
  Reopen({});
  const uint32_t first = ring_->primary_version();
  auto rotated = vault_->RotateDataKey();
  ASSERT_THAT(rotated, IsOk());
  EXPECT_EQ(*rotated, first + 1);
  EXPECT_EQ(States()[first], KeyState::kDecryptOnly);
  // Past the cryptoperiod the next Tokenize rotates first.
  Advance(absl::Hours(24 * 30));
  auto t = vault_->Tokenize(kPos, MakeCard("4111111111111111"));
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(ring_->primary_version(), first + 2);
  EXPECT_EQ(ParseRecordHeader(*db_->Get(storage::Table::kTokens, t->token))
                ->key_version,
            first + 2);
}

TEST_F(KeyRotationTest, FailedRotationKeepsServingUnderTheOldKey) {
  UseRotatingRing(10);
  wrapper_.Fail(true);
  auto tokens = TokenizeMany(30, 8);  // the key is due after 10
  EXPECT_EQ(tokens.size(), 30u);
  EXPECT_EQ(ring_->primary_version(), 1u);
  wrapper_.Fail(false);
  ASSERT_THAT(vault_->Tokenize(kPos, MakeCard("4111111111111111")), IsOk());
  EXPECT_EQ(ring_->primary_version(), 2u);
  ExpectAllDetokenize(tokens);
}

}  // namespace
}  // namespace cardvault::vault
