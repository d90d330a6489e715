// Dual control of key operations, on a real RocksDB and audit chain, with
// keys made by an in-memory stand-in for the HSM.
#include "server/vault/key_admin.h"

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/vault/vault_fixture.h"
#include "tests/testing/fake_key_wrapper.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::vault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const auth::Caller kAdmin1 = MakeCaller("admin1");
const auth::Caller kAdmin2 = MakeCaller("admin2");
const auth::Caller kAdmin3 = MakeCaller("admin3");

class KeyAdminTest : public VaultTest {
 protected:
  void SetUp() override {
    VaultTest::SetUp();
    for (const auth::Caller* admin : {&kAdmin1, &kAdmin2, &kAdmin3}) {
      spec_.bindings.push_back(
          {admin->identity, {auth::Role::kAdmin}, {}, {}, {}});
    }
    ApplyPolicy();
    vault_.reset();
    KeyRing::Options options;
    options.now = [this] { return Now(); };
    LoadRing(options);
    Reopen({});
    reencryptor_ =
        *Reencryptor::Create(store_.get(), ring_.get(), audit_.get(), {});
    KeyAdmin::Options admin_options;
    admin_options.now = [this] { return Now(); };
    admin_ = *KeyAdmin::Create({.keys = ring_.get(),
                                .kek = kek_.get(),
                                .reencryptor = reencryptor_.get(),
                                .vault = vault_.get(),
                                .policy = policy_.get(),
                                .audit = audit_.get(),
                                .other_keys = {{.id = "fingerprint/00000001",
                                                .purpose = "fingerprint",
                                                .algorithm = "HMAC-SHA256"}}},
                               admin_options);
  }
  void TearDown() override {
    admin_.reset();
    reencryptor_.reset();
    VaultTest::TearDown();
  }
  // Rotates once and re-encrypts, so that version 1 is retired.
  void RetireFirstKey() {
    ASSERT_THAT(vault_->Tokenize(kPos, MakeCard("4111111111111111")), IsOk());
    ASSERT_THAT(admin_->RotateDataKey(kAdmin1), IsOk());
    ASSERT_THAT(reencryptor_->RunPass(), IsOk());
    ASSERT_EQ(ring_->Inventory()[0].state, KeyState::kRetired);
  }
  bool FirstKeyDestroyed() {
    return ring_->Inventory()[0].state == KeyState::kDestroyed;
  }

  std::unique_ptr<Reencryptor> reencryptor_;
  std::unique_ptr<KeyAdmin> admin_;
};

TEST_F(KeyAdminTest, OneAdminAloneCannotDestroyAKey) {
  RetireFirstKey();
  auto op = admin_->Propose(kAdmin1, OperationKind::kDestroyDataKey, 1,
                            "dek/1 retired after rotation");
  ASSERT_THAT(op, IsOk());
  EXPECT_EQ(op->state, OperationState::kPending);
  EXPECT_THAT(op->approvers, ElementsAre(kAdmin1.identity));
  // The proposer approving again does not count.
  EXPECT_THAT(
      admin_->Approve(kAdmin1, op->id),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("distinct")));
  EXPECT_FALSE(FirstKeyDestroyed());
  // A second admin's approval executes it.
  auto approved = admin_->Approve(kAdmin2, op->id);
  ASSERT_THAT(approved, IsOk());
  EXPECT_EQ(approved->state, OperationState::kExecuted);
  EXPECT_THAT(approved->approvers,
              ElementsAre(kAdmin1.identity, kAdmin2.identity));
  EXPECT_TRUE(FirstKeyDestroyed());
  // Executed operations take no more approvals.
  EXPECT_THAT(admin_->Approve(kAdmin3, op->id),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(KeyAdminTest, OneAdminAloneCannotRotateTheKek) {
  auto token = vault_->Tokenize(kPos, MakeCard("4111111111111111"));
  ASSERT_THAT(token, IsOk());
  auto op = admin_->Propose(kAdmin1, OperationKind::kRotateKek, 0,
                            "annual KEK rotation");
  ASSERT_THAT(op, IsOk());
  EXPECT_THAT(admin_->Approve(kAdmin1, op->id),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(wrapper_.keks(), ElementsAre("fake-kek"));
  EXPECT_EQ(kek_->State()->generation, 1u);

  auto approved = admin_->Approve(kAdmin2, op->id);
  ASSERT_THAT(approved, IsOk());
  EXPECT_EQ(approved->state, OperationState::kExecuted) << approved->outcome;
  EXPECT_THAT(approved->outcome, HasSubstr("fake-kek/00000002"));
  // The old KEK is gone from the "HSM"; every key unwraps under the new one.
  EXPECT_THAT(wrapper_.keks(), ElementsAre("fake-kek/00000002"));
  auto keys = admin_->ListKeys(kAuditor);
  ASSERT_THAT(keys, IsOk());
  EXPECT_EQ((*keys)[0].id, "kek/fake-kek/00000002");
  EXPECT_EQ((*keys)[0].version, 2u);
  admin_.reset();
  reencryptor_.reset();
  vault_.reset();
  LoadRing({});
  Reopen({});
  EXPECT_THAT(vault_->Detokenize(kProcessor, token->token, "authorization"),
              IsOk());
}

TEST_F(KeyAdminTest, ThreeApprovalsWhenConfigured) {
  RetireFirstKey();
  KeyAdmin::Options options;
  options.required_approvals = 3;
  auto strict = *KeyAdmin::Create({.keys = ring_.get(),
                                   .kek = kek_.get(),
                                   .reencryptor = reencryptor_.get(),
                                   .vault = vault_.get(),
                                   .policy = policy_.get(),
                                   .audit = audit_.get(),
                                   .other_keys = {}},
                                  options);
  auto op = strict->Propose(kAdmin1, OperationKind::kDestroyDataKey, 1, "");
  ASSERT_THAT(op, IsOk());
  EXPECT_EQ(strict->Approve(kAdmin2, op->id)->state, OperationState::kPending);
  EXPECT_FALSE(FirstKeyDestroyed());
  EXPECT_EQ(strict->Approve(kAdmin3, op->id)->state, OperationState::kExecuted);
  EXPECT_TRUE(FirstKeyDestroyed());
  EXPECT_THAT(KeyAdmin::Create({.keys = ring_.get(),
                                .kek = kek_.get(),
                                .reencryptor = reencryptor_.get(),
                                .vault = vault_.get(),
                                .policy = policy_.get(),
                                .audit = audit_.get(),
                                .other_keys = {}},
                               {.required_approvals = 1}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(KeyAdminTest, ExpiredProposalCannotExecute) {
  RetireFirstKey();
  auto op = admin_->Propose(kAdmin1, OperationKind::kDestroyDataKey, 1, "");
  ASSERT_THAT(op, IsOk());
  Advance(absl::Hours(24));
  EXPECT_THAT(
      admin_->Approve(kAdmin2, op->id),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("expired")));
  EXPECT_FALSE(FirstKeyDestroyed());
  auto ops = admin_->ListOperations(kAdmin3);
  ASSERT_THAT(ops, IsOk());
  ASSERT_EQ(ops->size(), 1u);
  EXPECT_EQ((*ops)[0].state, OperationState::kExpired);
}

TEST_F(KeyAdminTest, KeyStillInUseIsNotDestroyedEvenWithApprovals) {
  ASSERT_THAT(vault_->Tokenize(kPos, MakeCard("4111111111111111")), IsOk());
  ASSERT_THAT(admin_->RotateDataKey(kAdmin1), IsOk());
  // No re-encryption yet: version 1 still holds a record.
  auto op = admin_->Propose(kAdmin1, OperationKind::kDestroyDataKey, 1, "");
  ASSERT_THAT(op, IsOk());
  auto approved = admin_->Approve(kAdmin2, op->id);
  ASSERT_THAT(approved, IsOk());
  EXPECT_EQ(approved->state, OperationState::kFailed);
  EXPECT_THAT(approved->outcome, HasSubstr("not retired"));
  EXPECT_FALSE(FirstKeyDestroyed());
  // The primary cannot even be proposed.
  EXPECT_THAT(admin_->Propose(kAdmin1, OperationKind::kDestroyDataKey,
                              ring_->primary_version(), ""),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(KeyAdminTest, BulkReencryptionNeedsTwoAdmins) {
  ASSERT_THAT(vault_->Tokenize(kPos, MakeCard("4111111111111111")), IsOk());
  ASSERT_THAT(admin_->RotateDataKey(kAdmin1), IsOk());
  auto op = admin_->Propose(kAdmin2, OperationKind::kReencryptAll, 0,
                            "move records off dek/1");
  ASSERT_THAT(op, IsOk());
  EXPECT_EQ(ring_->Inventory()[0].state, KeyState::kDecryptOnly);
  ASSERT_EQ(admin_->Approve(kAdmin3, op->id)->state, OperationState::kExecuted);
  EXPECT_EQ(ring_->Inventory()[0].state, KeyState::kRetired);
}

TEST_F(KeyAdminTest, RolesAndInventory) {
  for (const auth::Caller* c : {&kPos, &kProcessor, &kAuditor, &kStranger}) {
    EXPECT_THAT(admin_->RotateDataKey(*c),
                StatusIs(absl::StatusCode::kPermissionDenied));
    EXPECT_THAT(admin_->Propose(*c, OperationKind::kReencryptAll, 0, ""),
                StatusIs(absl::StatusCode::kPermissionDenied));
  }
  EXPECT_THAT(admin_->ListKeys(kProcessor),
              StatusIs(absl::StatusCode::kPermissionDenied));
  auto keys = admin_->ListKeys(kAuditor);
  ASSERT_THAT(keys, IsOk());
  ASSERT_EQ(keys->size(), 3u);
  EXPECT_EQ((*keys)[0].id, "kek/fake-kek");
  EXPECT_EQ((*keys)[0].state, KeyState::kActive);
  EXPECT_EQ((*keys)[1].id, "fingerprint/00000001");
  EXPECT_EQ((*keys)[2].id, "dek/00000001");
  EXPECT_EQ((*keys)[2].state, KeyState::kActive);
  EXPECT_EQ((*keys)[2].algorithm, "AES-256-GCM");
  // Every call is in the audit trail, refusals included.
  int admin_events = 0;
  for (const auto& e : Events())
    admin_events += e.event_type() == v1::KEY_ADMIN;
  EXPECT_EQ(admin_events, 4 * 2 + 2);
}

}  // namespace
}  // namespace cardvault::vault
