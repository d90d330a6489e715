// Dual control of key operations, on a real RocksDB and audit chain, with
// keys made by an in-memory stand-in for the HSM; operations shared by
// several KeyAdmin instances on one store (nodes), and on two instances of
// the PostgreSQL store; the stored record format.
#include "server/vault/key_admin.h"

#include <atomic>
#include <fstream>
#include <iterator>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/pg_connection.h"
#include "server/storage/postgres_schema.h"
#include "server/storage/postgres_store.h"
#include "server/vault/index_entry.h"
#include "server/vault/operation_record.h"
#include "tests/server/vault/vault_fixture.h"
#include "tests/testing/fake_key_wrapper.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::vault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::SizeIs;

const auth::Caller kAdmin1 = MakeCaller("admin1");
const auth::Caller kAdmin2 = MakeCaller("admin2");
const auth::Caller kAdmin3 = MakeCaller("admin3");
const auth::Caller kAdmin4 = MakeCaller("admin4");
const auth::Caller kAdmin5 = MakeCaller("admin5");
const auth::Caller kAdmin6 = MakeCaller("admin6");
// A Luhn-valid test PAN that nothing tokenizes: it must reach no store.
constexpr char kSmuggledPan[] = "5555555555554444";
// An admin whose (policy-bound) identity holds it.
const auth::Caller kPanAdmin = [] {
  auth::Caller c = MakeCaller(kSmuggledPan);
  c.request_id = "req-pan-admin";
  return c;
}();

// The operation MAC key every node of these tests shares (the HSM would
// unwrap it for each).
const OperationMac& TestMac() {
  static const crypto::HmacSha256* const kKey =
      crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'o')))
          ->release();
  static const OperationMac kMac{.mac = kKey, .version = 1};
  return kMac;
}

// `record` with its MAC made again under `mac`: what a writer holding the
// key, but not applying the format's rules, would store.
std::string Resigned(const std::string& record, const OperationMac& mac) {
  std::string body =
      record.substr(0, record.size() - crypto::HmacSha256::kMacSize);
  return body + mac.mac->ComputeSecret({"cardvault/operation-record", body});
}

class KeyAdminTest : public VaultTest {
 protected:
  void SetUp() override {
    VaultTest::SetUp();
    for (const auth::Caller* admin : {&kAdmin1, &kAdmin2, &kAdmin3, &kAdmin4,
                                      &kAdmin5, &kAdmin6, &kPanAdmin}) {
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
    admin_ = MakeAdmin({});
  }
  // Another KeyAdmin on the same store and trail: another node, or this
  // node after a restart. On the fixture's clock.
  std::unique_ptr<KeyAdmin> MakeAdmin(KeyAdmin::Options options) {
    options.now = [this] { return Now(); };
    absl::StatusOr<std::unique_ptr<KeyAdmin>> admin =
        KeyAdmin::Create({.keys = ring_.get(),
                          .kek = kek_.get(),
                          .reencryptor = reencryptor_.get(),
                          .vault = vault_.get(),
                          .policy = policy_.get(),
                          .audit = audit_.get(),
                          .records = store_.get(),
                          .operation_mac = TestMac(),
                          .other_keys = {{.id = "fingerprint/00000001",
                                          .purpose = "fingerprint",
                                          .algorithm = "HMAC-SHA256"}}},
                         std::move(options));
    EXPECT_THAT(admin, IsOk());
    return *std::move(admin);
  }
  // Every (key, value) of Table::kShared.
  std::vector<std::pair<std::string, std::string>> Shared() {
    absl::StatusOr<std::vector<std::pair<std::string, std::string>>> all =
        db_->Scan(storage::Table::kShared, "", 100000);
    EXPECT_THAT(all, IsOk());
    return all.ok() ? *all : std::vector<std::pair<std::string, std::string>>{};
  }
  // Puts `value` under `key` of Table::kShared, as another node could.
  void PutShared(const std::string& key, const std::string& value) {
    storage::Transaction t;
    t.writes.push_back({storage::Table::kShared, key, value});
    ASSERT_THAT(storage::CommitUnaudited(*db_, t), IsOk());
  }
  int ExecutionRecords() {
    int n = 0;
    for (const auto& e : Events()) {
      n += e.event_type() == v1::KEY_ADMIN &&
           absl::StartsWith(e.detail(), "executed operation");
    }
    return n;
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
  const KeyAdmin::Dependencies deps{.keys = ring_.get(),
                                    .kek = kek_.get(),
                                    .reencryptor = reencryptor_.get(),
                                    .vault = vault_.get(),
                                    .policy = policy_.get(),
                                    .audit = audit_.get(),
                                    .records = store_.get(),
                                    .operation_mac = TestMac(),
                                    .other_keys = {},
                                    .backups = nullptr};
  KeyAdmin::Options options;
  options.required_approvals = 3;
  auto strict = *KeyAdmin::Create(deps, options);
  auto op = strict->Propose(kAdmin1, OperationKind::kDestroyDataKey, 1, "");
  ASSERT_THAT(op, IsOk());
  EXPECT_EQ(strict->Approve(kAdmin2, op->id)->state, OperationState::kPending);
  EXPECT_FALSE(FirstKeyDestroyed());
  EXPECT_EQ(strict->Approve(kAdmin3, op->id)->state, OperationState::kExecuted);
  EXPECT_TRUE(FirstKeyDestroyed());
  for (uint32_t approvals : {1u, kMaxRequiredApprovals + 1}) {
    KeyAdmin::Options bad;
    bad.required_approvals = approvals;
    EXPECT_THAT(KeyAdmin::Create(deps, bad),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << approvals;
  }
  // Nor without the store its operations live in, or the key their records
  // are authenticated under.
  KeyAdmin::Dependencies no_records = deps;
  no_records.records = nullptr;
  EXPECT_THAT(KeyAdmin::Create(no_records, {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  KeyAdmin::Dependencies no_mac = deps;
  no_mac.operation_mac = {};
  EXPECT_THAT(KeyAdmin::Create(no_mac, {}),
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

TEST_F(KeyAdminTest, ProposedOnOneNodeApprovedOnAnother) {
  RetireFirstKey();
  std::unique_ptr<KeyAdmin> node_b = MakeAdmin({});
  auto op = admin_->Propose(kAdmin1, OperationKind::kDestroyDataKey, 1,
                            "dek/1 retired after rotation");
  ASSERT_THAT(op, IsOk());
  // Node B sees it as node A proposed it.
  auto listed = node_b->ListOperations(kAuditor);
  ASSERT_THAT(listed, IsOk());
  ASSERT_THAT(*listed, SizeIs(1));
  EXPECT_EQ((*listed)[0].id, op->id);
  EXPECT_EQ((*listed)[0].state, OperationState::kPending);
  EXPECT_EQ((*listed)[0].reason, "dek/1 retired after rotation");
  EXPECT_EQ((*listed)[0].proposer, kAdmin1.identity);
  EXPECT_EQ((*listed)[0].proposed, op->proposed);
  EXPECT_EQ((*listed)[0].expires, op->expires);
  // The proposer counts once on any node.
  EXPECT_THAT(
      node_b->Approve(kAdmin1, op->id),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("distinct")));
  auto approved = node_b->Approve(kAdmin2, op->id);
  ASSERT_THAT(approved, IsOk());
  EXPECT_EQ(approved->state, OperationState::kExecuted) << approved->outcome;
  EXPECT_THAT(approved->approvers,
              ElementsAre(kAdmin1.identity, kAdmin2.identity));
  EXPECT_TRUE(FirstKeyDestroyed());
  // Node A sees the outcome, and refuses further approvals.
  listed = admin_->ListOperations(kAdmin3);
  ASSERT_THAT(listed, IsOk());
  ASSERT_THAT(*listed, SizeIs(1));
  EXPECT_EQ((*listed)[0].state, OperationState::kExecuted);
  EXPECT_THAT((*listed)[0].outcome, HasSubstr("destroyed dek/00000001"));
  EXPECT_THAT(admin_->Approve(kAdmin3, op->id),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("no longer pending")));
  EXPECT_EQ(ExecutionRecords(), 1);
}

TEST_F(KeyAdminTest, RestartKeepsPendingProposals) {
  RetireFirstKey();
  auto op = admin_->Propose(kAdmin1, OperationKind::kDestroyDataKey, 1,
                            "before the restart");
  ASSERT_THAT(op, IsOk());
  admin_.reset();
  admin_ = MakeAdmin({});
  auto listed = admin_->ListOperations(kAuditor);
  ASSERT_THAT(listed, IsOk());
  ASSERT_THAT(*listed, SizeIs(1));
  EXPECT_EQ((*listed)[0].id, op->id);
  EXPECT_EQ((*listed)[0].kind, OperationKind::kDestroyDataKey);
  EXPECT_EQ((*listed)[0].key_version, 1u);
  EXPECT_EQ((*listed)[0].state, OperationState::kPending);
  EXPECT_THAT((*listed)[0].approvers, ElementsAre(kAdmin1.identity));
  EXPECT_EQ((*listed)[0].required_approvals, 2u);
  // Expiry runs from the stored time, not from the restart.
  Advance(absl::Hours(23));
  admin_ = MakeAdmin({});
  auto approved = admin_->Approve(kAdmin2, op->id);
  ASSERT_THAT(approved, IsOk());
  EXPECT_EQ(approved->state, OperationState::kExecuted);
  EXPECT_TRUE(FirstKeyDestroyed());
}

TEST_F(KeyAdminTest, ExpiryRunsFromTheStoredTimeAfterARestart) {
  RetireFirstKey();
  auto op = admin_->Propose(kAdmin1, OperationKind::kDestroyDataKey, 1, "");
  ASSERT_THAT(op, IsOk());
  Advance(absl::Hours(24));
  admin_ = MakeAdmin({});
  EXPECT_THAT(
      admin_->Approve(kAdmin2, op->id),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("expired")));
  EXPECT_FALSE(FirstKeyDestroyed());
}

TEST_F(KeyAdminTest, ConcurrentApprovalsOnSeveralNodesExecuteOnce) {
  RetireFirstKey();
  std::vector<std::unique_ptr<KeyAdmin>> nodes;
  for (int i = 0; i < 3; ++i) nodes.push_back(MakeAdmin({}));
  // Three approvals needed, two more than the proposer's; five admins race.
  std::unique_ptr<KeyAdmin> strict = MakeAdmin({.required_approvals = 3});
  auto op = strict->Propose(kAdmin1, OperationKind::kDestroyDataKey, 1, "");
  ASSERT_THAT(op, IsOk());
  const std::vector<const auth::Caller*> admins = {&kAdmin2, &kAdmin3, &kAdmin4,
                                                   &kAdmin5, &kAdmin6};
  std::vector<absl::StatusOr<Operation>> results(admins.size(),
                                                 absl::UnknownError(""));
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (size_t i = 0; i < admins.size(); ++i) {
    threads.emplace_back([&, i] {
      while (!go.load()) std::this_thread::yield();
      results[i] = nodes[i % nodes.size()]->Approve(*admins[i], op->id);
    });
  }
  go = true;
  for (std::thread& t : threads) t.join();
  int pending = 0, executed = 0, refused = 0;
  for (const auto& r : results) {
    if (r.ok()) {
      pending += r->state == OperationState::kPending;
      executed += r->state == OperationState::kExecuted;
    } else {
      EXPECT_THAT(r, StatusIs(absl::StatusCode::kFailedPrecondition,
                              HasSubstr("no longer pending")));
      ++refused;
    }
  }
  EXPECT_EQ(pending, 1);
  EXPECT_EQ(executed, 1);
  EXPECT_EQ(refused, 3);
  EXPECT_TRUE(FirstKeyDestroyed());
  EXPECT_EQ(ExecutionRecords(), 1);
  auto listed = nodes[0]->ListOperations(kAuditor);
  ASSERT_THAT(listed, IsOk());
  ASSERT_THAT(*listed, SizeIs(1));
  EXPECT_EQ((*listed)[0].state, OperationState::kExecuted);
  EXPECT_THAT((*listed)[0].approvers, SizeIs(3));
}

TEST_F(KeyAdminTest, ConcurrentProposalsAndApprovalsOfManyOperations) {
  ASSERT_THAT(vault_->Tokenize(kPos, MakeCard("4111111111111111")), IsOk());
  std::vector<std::unique_ptr<KeyAdmin>> nodes;
  for (int i = 0; i < 2; ++i) nodes.push_back(MakeAdmin({}));
  constexpr int kOperations = 4;
  std::vector<std::string> ids;
  for (int i = 0; i < kOperations; ++i) {
    auto op = nodes[i % 2]->Propose(kAdmin1, OperationKind::kReencryptAll, 0,
                                    absl::StrCat("pass ", i));
    ASSERT_THAT(op, IsOk());
    ids.push_back(op->id);
  }
  // Every operation approved by two admins on two nodes at once.
  std::vector<std::thread> threads;
  std::atomic<int> executed{0};
  for (int i = 0; i < kOperations; ++i) {
    for (int a = 0; a < 2; ++a) {
      threads.emplace_back([&, i, a] {
        auto r = nodes[a]->Approve(a == 0 ? kAdmin2 : kAdmin3, ids[i]);
        if (r.ok() && r->state == OperationState::kExecuted) ++executed;
      });
    }
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(executed.load(), kOperations);
  EXPECT_EQ(ExecutionRecords(), kOperations);
}

TEST_F(KeyAdminTest, AStricterNodeAsksForMoreApprovals) {
  RetireFirstKey();
  std::unique_ptr<KeyAdmin> strict = MakeAdmin({.required_approvals = 3});
  auto op = admin_->Propose(kAdmin1, OperationKind::kDestroyDataKey, 1, "");
  ASSERT_THAT(op, IsOk());
  auto second = strict->Approve(kAdmin2, op->id);
  ASSERT_THAT(second, IsOk());
  EXPECT_EQ(second->state, OperationState::kPending);
  EXPECT_EQ(second->required_approvals, 3u);
  EXPECT_FALSE(FirstKeyDestroyed());
  // The lenient node keeps the stricter count now stored.
  EXPECT_EQ(admin_->Approve(kAdmin3, op->id)->state, OperationState::kExecuted);
  EXPECT_TRUE(FirstKeyDestroyed());
}

TEST_F(KeyAdminTest, AnOperationLeftExecutingIsNeverRunAgain) {
  RetireFirstKey();
  // What a node that stopped in the middle of an execution leaves.
  Operation op;
  op.id = "op_0a0b0c0d0e0f0a0b";
  op.kind = OperationKind::kDestroyDataKey;
  op.key_version = 1;
  op.approvers = {kAdmin1.identity, kAdmin2.identity};
  op.required_approvals = 2;
  op.state = OperationState::kExecuting;
  op.proposed = op.changed = Now();
  op.expires = Now() + absl::Hours(24);
  op.outcome = "executing on node b";
  PutShared(OperationKey(op.id), *EncodeOperationRecord(op, TestMac()));
  EXPECT_THAT(admin_->Approve(kAdmin3, op.id),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("no longer pending")));
  EXPECT_FALSE(FirstKeyDestroyed());
  // Listed as executing, also past its expiry and the retention.
  Advance(absl::Hours(24 * 60));
  ASSERT_THAT(admin_->Propose(kAdmin1, OperationKind::kReencryptAll, 0, ""),
              IsOk());
  auto listed = admin_->ListOperations(kAuditor);
  ASSERT_THAT(listed, IsOk());
  ASSERT_THAT(*listed, SizeIs(2));
  EXPECT_EQ((*listed)[0].id, op.id);
  EXPECT_EQ((*listed)[0].state, OperationState::kExecuting);
}

TEST_F(KeyAdminTest, FinishedOperationsAreForgottenAfterTheRetention) {
  RetireFirstKey();
  std::unique_ptr<KeyAdmin> admin =
      MakeAdmin({.finished_retention = absl::Hours(48)});
  auto expired = admin->Propose(kAdmin1, OperationKind::kDestroyDataKey, 1, "");
  ASSERT_THAT(expired, IsOk());
  auto done = admin->Propose(kAdmin1, OperationKind::kReencryptAll, 0, "");
  ASSERT_THAT(done, IsOk());
  ASSERT_EQ(admin->Approve(kAdmin2, done->id)->state,
            OperationState::kExecuted);
  // 47 hours after the execution and 23 after the expiry: both kept.
  Advance(absl::Hours(47));
  ASSERT_THAT(admin->Propose(kAdmin1, OperationKind::kReencryptAll, 0, ""),
              IsOk());
  EXPECT_THAT(*admin->ListOperations(kAuditor), SizeIs(3));
  // 48 after the execution: it goes; the expired one an hour later (its
  // end is its expiry).
  Advance(absl::Hours(1));
  ASSERT_THAT(admin->Propose(kAdmin1, OperationKind::kReencryptAll, 0, ""),
              IsOk());
  auto listed = admin->ListOperations(kAuditor);
  ASSERT_THAT(listed, IsOk());
  ASSERT_THAT(*listed, SizeIs(3));
  EXPECT_EQ((*listed)[0].id, expired->id);
  EXPECT_EQ((*listed)[0].state, OperationState::kExpired);
  Advance(absl::Hours(24));
  ASSERT_THAT(admin->Propose(kAdmin1, OperationKind::kReencryptAll, 0, ""),
              IsOk());
  listed = admin->ListOperations(kAuditor);
  ASSERT_THAT(listed, IsOk());
  for (const Operation& op : *listed) {
    EXPECT_NE(op.id, expired->id);
    EXPECT_NE(op.id, done->id);
  }
  bool recorded = false;
  for (const auto& e : Events()) {
    recorded = recorded || absl::StrContains(e.detail(), "; forgot 1 ");
  }
  EXPECT_TRUE(recorded);
}

TEST_F(KeyAdminTest, AtMostMaxOperationsAreHeld) {
  // kMaxOperations pending operations, stored as nodes would have.
  storage::Transaction t;
  for (size_t i = 0; i < kMaxOperations; ++i) {
    Operation op;
    // Letters between the digits: no run that could be a card number.
    op.id = absl::StrFormat("op_%04xabcdabcdabcd", i);
    op.kind = OperationKind::kReencryptAll;
    op.approvers = {kAdmin1.identity};
    op.required_approvals = 2;
    op.proposed = op.changed = Now();
    op.expires = Now() + absl::Hours(24);
    t.writes.push_back({storage::Table::kShared, OperationKey(op.id),
                        *EncodeOperationRecord(op, TestMac())});
  }
  // Something else of the shared table after them.
  t.writes.push_back({storage::Table::kShared, "uses/x", "y"});
  t.writes.push_back({storage::Table::kShared, "lease/x", "y"});
  ASSERT_THAT(storage::CommitUnaudited(*db_, t), IsOk());
  EXPECT_THAT(admin_->Propose(kAdmin1, OperationKind::kReencryptAll, 0, ""),
              StatusIs(absl::StatusCode::kResourceExhausted));
  auto listed = admin_->ListOperations(kAuditor);
  ASSERT_THAT(listed, IsOk());
  EXPECT_THAT(*listed, SizeIs(kMaxOperations));
  // One executed: still held until the retention has passed.
  ASSERT_EQ(admin_->Approve(kAdmin2, (*listed)[0].id)->state,
            OperationState::kExecuted);
  EXPECT_THAT(admin_->Propose(kAdmin1, OperationKind::kReencryptAll, 0, ""),
              StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST_F(KeyAdminTest, AMalformedRecordIsRefusedAndNotListed) {
  auto op = admin_->Propose(kAdmin1, OperationKind::kReencryptAll, 0, "");
  ASSERT_THAT(op, IsOk());
  PutShared("op/op_1a2b3c4d5e6f7a8b", "\x02garbage");
  EXPECT_THAT(admin_->Approve(kAdmin2, "op_1a2b3c4d5e6f7a8b"),
              StatusIs(absl::StatusCode::kDataLoss));
  auto listed = admin_->ListOperations(kAuditor);
  ASSERT_THAT(listed, IsOk());
  ASSERT_THAT(*listed, SizeIs(1));
  EXPECT_EQ((*listed)[0].id, op->id);
  // A record stored under another operation's key is not taken for it.
  PutShared("op/op_1a2b3c4d5e6f7a8c",
            *store_->Get(storage::Table::kShared, OperationKey(op->id)));
  EXPECT_THAT(admin_->Approve(kAdmin2, "op_1a2b3c4d5e6f7a8c"),
              StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(*admin_->ListOperations(kAuditor), SizeIs(1));
}

TEST_F(KeyAdminTest, ADatabaseWriterCannotForgeAnApproval) {
  RetireFirstKey();
  // Whoever can write the database, without the operation key, stores a
  // destruction that one more approval would execute...
  const std::unique_ptr<crypto::HmacSha256> guessed =
      *crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'g')));
  Operation op;
  op.id = "op_0a0b0c0d0e0f0a0c";
  op.kind = OperationKind::kDestroyDataKey;
  op.key_version = 1;
  op.approvers = {kAdmin1.identity};
  op.required_approvals = 2;
  op.proposed = op.changed = Now();
  op.expires = Now() + absl::Hours(24);
  PutShared(OperationKey(op.id),
            *EncodeOperationRecord(op, {.mac = guessed.get(), .version = 1}));
  // ... or alters a genuine proposal to name a second approver.
  auto genuine = admin_->Propose(kAdmin1, OperationKind::kDestroyDataKey, 1,
                                 "retire dek 1");
  ASSERT_THAT(genuine, IsOk());
  std::string record =
      *store_->Get(storage::Table::kShared, OperationKey(genuine->id));
  absl::StatusOr<Operation> read = DecodeOperationRecord(record, TestMac());
  ASSERT_THAT(read, IsOk());
  read->approvers.push_back(kAdmin2.identity);
  read->state = OperationState::kExecuting;
  PutShared(
      OperationKey(genuine->id),
      *EncodeOperationRecord(*read, {.mac = guessed.get(), .version = 1}));
  for (const std::string& id : {op.id, genuine->id}) {
    EXPECT_THAT(admin_->Approve(kAdmin3, id),
                StatusIs(absl::StatusCode::kDataLoss));
  }
  EXPECT_FALSE(FirstKeyDestroyed());
  auto listed = admin_->ListOperations(kAuditor);
  ASSERT_THAT(listed, IsOk());
  EXPECT_THAT(*listed, IsEmpty());
}

TEST_F(KeyAdminTest, AStoreThatCannotWriteRefusesAndKeepsNothing) {
  RetireFirstKey();
  auto op = admin_->Propose(kAdmin1, OperationKind::kDestroyDataKey, 1, "");
  ASSERT_THAT(op, IsOk());
  store_->FailCommits(true);
  EXPECT_THAT(admin_->Propose(kAdmin1, OperationKind::kReencryptAll, 0, ""),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(admin_->Approve(kAdmin2, op->id),
              StatusIs(absl::StatusCode::kUnavailable));
  store_->FailCommits(false);
  EXPECT_FALSE(FirstKeyDestroyed());
  auto listed = admin_->ListOperations(kAuditor);
  ASSERT_THAT(listed, IsOk());
  ASSERT_THAT(*listed, SizeIs(1));
  EXPECT_THAT((*listed)[0].approvers, ElementsAre(kAdmin1.identity));
  EXPECT_EQ(admin_->Approve(kAdmin2, op->id)->state, OperationState::kExecuted);
}

TEST_F(KeyAdminTest, NoCardNumberReachesTheStoredOperations) {
  RetireFirstKey();
  const std::string pan = kSmuggledPan;
  // In the reason, plain or broken up by separators of any kind.
  for (const std::string& reason :
       {pan, absl::StrCat("rotate ", pan), std::string("5555 5555 5555 4444"),
        std::string("5555-5555-5555-4444"), std::string("5555.5555.5555.4444"),
        std::string("5555/5555/5555/4444"), std::string("5555x5555y5555z4444"),
        std::string("5555 - 5555 - 5555 - 4444"), absl::StrCat(pan, "123")}) {
    EXPECT_THAT(
        admin_->Propose(kAdmin1, OperationKind::kReencryptAll, 0, reason),
        StatusIs(absl::StatusCode::kInvalidArgument))
        << reason;
  }
  EXPECT_THAT(Shared(), IsEmpty());
  // As the operation id of an approval: never looked up, never stored.
  for (const std::string& id :
       {pan, absl::StrCat("op_", pan), absl::StrCat("op/op_", pan),
        absl::StrCat("op_", pan.substr(0, 12), "abcd")}) {
    EXPECT_THAT(admin_->Approve(kAdmin1, id),
                StatusIs(absl::StatusCode::kNotFound))
        << id;
  }
  EXPECT_FALSE(IsOperationId(absl::StrCat("op_", pan)));
  EXPECT_THAT(Shared(), IsEmpty());
  // In an admin's identity: stored as its marker, and counted once.
  auto op = admin_->Propose(kPanAdmin, OperationKind::kDestroyDataKey, 1,
                            "proposed by the admin whose id holds digits");
  ASSERT_THAT(op, IsOk());
  EXPECT_EQ(op->proposer, audit_->marker().Mark(kPanAdmin.identity));
  EXPECT_THAT(
      admin_->Approve(kPanAdmin, op->id),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("distinct")));
  auto approved = admin_->Approve(kAdmin2, op->id);
  ASSERT_THAT(approved, IsOk());
  EXPECT_EQ(approved->state, OperationState::kExecuted);
  EXPECT_THAT(
      approved->approvers,
      ElementsAre(audit_->marker().Mark(kPanAdmin.identity), kAdmin2.identity));
  // Digits that are no card number are a reason like any other.
  EXPECT_THAT(admin_->Propose(kAdmin1, OperationKind::kReencryptAll, 0,
                              "dek/00000001 retired on 2026-11-25, ticket 42"),
              IsOk());
  // Nothing stored holds the PAN, in any table.
  for (const auto& [key, value] : Shared()) {
    EXPECT_THAT(key, Not(HasSubstr(pan.substr(0, 12))));
    EXPECT_THAT(value, Not(HasSubstr(pan.substr(0, 12))));
    EXPECT_THAT(DecodeOperationRecord(value, TestMac()), IsOk());
  }
  for (const auto& e : Events()) {
    EXPECT_THAT(e.SerializeAsString(), Not(HasSubstr(pan))) << e.detail();
  }
  audit_.reset();
  reencryptor_.reset();
  admin_.reset();
  vault_.reset();
  ring_.reset();
  kek_.reset();
  store_.reset();
  db_.reset();
  for (const auto& f : std::filesystem::recursive_directory_iterator(dir_)) {
    if (!f.is_regular_file()) continue;
    std::ifstream in(f.path(), std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)),
                            std::istreambuf_iterator<char>());
    EXPECT_THAT(bytes, Not(HasSubstr(pan))) << f.path();
    EXPECT_THAT(bytes, Not(HasSubstr("5555 5555"))) << f.path();
  }
}

// The stored record format (operation_record.h).
Operation SampleOperation() {
  Operation op;
  op.id = "op_0123456789abcdef";
  op.kind = OperationKind::kDestroyKek;
  op.key_version = 7;
  op.reason = "retire the 2025 KEK";
  op.approvers = {"spiffe://t/admin1", "spiffe://t/admin2"};
  op.proposer = op.approvers[0];
  op.required_approvals = 3;
  op.state = OperationState::kPending;
  op.proposed = absl::FromUnixMillis(1764000000123);
  op.expires = op.proposed + absl::Hours(24);
  op.changed = op.proposed + absl::Minutes(5);
  return op;
}

TEST(OperationRecordTest, RoundTripsEveryStoredState) {
  for (OperationState state :
       {OperationState::kPending, OperationState::kExecuting,
        OperationState::kExecuted, OperationState::kFailed}) {
    Operation op = SampleOperation();
    op.state = state;
    op.outcome = "done: re-encrypted 12 records";
    absl::StatusOr<std::string> record = EncodeOperationRecord(op, TestMac());
    ASSERT_THAT(record, IsOk());
    EXPECT_EQ((*record)[0], '\x02');
    absl::StatusOr<Operation> back = DecodeOperationRecord(*record, TestMac());
    ASSERT_THAT(back, IsOk());
    EXPECT_EQ(back->id, op.id);
    EXPECT_EQ(back->kind, op.kind);
    EXPECT_EQ(back->key_version, op.key_version);
    EXPECT_EQ(back->reason, op.reason);
    EXPECT_EQ(back->proposer, op.proposer);
    EXPECT_EQ(back->approvers, op.approvers);
    EXPECT_EQ(back->required_approvals, op.required_approvals);
    EXPECT_EQ(back->state, state);
    EXPECT_EQ(back->proposed, op.proposed);
    EXPECT_EQ(back->expires, op.expires);
    EXPECT_EQ(back->changed, op.changed);
    EXPECT_EQ(back->outcome, op.outcome);
  }
}

TEST(OperationRecordTest, LayoutIsAsDocumented) {
  Operation op = SampleOperation();
  op.approvers = {"a"};
  op.reason = "r";
  const std::string record = *EncodeOperationRecord(op, TestMac());
  const std::string expected_head =
      std::string("\x02\x04\x01\x00\x00\x00\x07\x03", 8);
  EXPECT_EQ(record.substr(0, 8), expected_head);
  EXPECT_EQ(record.substr(32, 2 + 19), std::string("\x00\x13", 2) + op.id);
  EXPECT_EQ(record.substr(53, 9), std::string("\x00\x01r\x01\x00\x01"
                                              "a\x00\x00",
                                              9));
  // The MAC key's version, then HMAC-SHA256 of the label and all before it.
  ASSERT_EQ(record.size(), 62u + 4 + 32);
  EXPECT_EQ(record.substr(62, 4), std::string("\x00\x00\x00\x01", 4));
  EXPECT_EQ(record.substr(66),
            TestMac().mac->Compute(absl::StrCat("cardvault/operation-record",
                                                record.substr(0, 66))));
}

TEST(OperationRecordTest, RefusesRecordsThatBreakARule) {
  const std::string pan = kSmuggledPan;
  std::vector<Operation> bad;
  auto with = [&](auto change) {
    Operation op = SampleOperation();
    change(op);
    bad.push_back(op);
  };
  with([&](Operation& op) { op.reason = pan; });
  with([&](Operation& op) { op.reason = "5555 5555 5555 4444"; });
  with([&](Operation& op) { op.reason = "line\nbreak"; });
  with(
      [](Operation& op) { op.reason = std::string(kMaxReasonBytes + 1, 'r'); });
  with([&](Operation& op) { op.approvers[1] = "spiffe://t/" + pan; });
  with([](Operation& op) { op.approvers[1] = ""; });
  with([](Operation& op) { op.approvers[1] = op.approvers[0]; });
  with([](Operation& op) {
    op.approvers[1] = std::string(kMaxStoredIdentityBytes + 1, 'a');
  });
  with([](Operation& op) { op.approvers.clear(); });
  with([](Operation& op) {
    op.approvers.push_back("c");
    op.approvers.push_back("d");
  });
  with([&](Operation& op) { op.outcome = "failed for " + pan; });
  with([](Operation& op) {
    op.outcome = std::string(kMaxOutcomeBytes + 1, 'o');
  });
  with([&](Operation& op) { op.id = "op_" + pan; });
  with([](Operation& op) { op.id = "op_0123456789ABCDEF"; });
  with([](Operation& op) { op.required_approvals = 1; });
  with(
      [](Operation& op) { op.required_approvals = kMaxRequiredApprovals + 1; });
  with([](Operation& op) { op.state = OperationState::kExpired; });
  with([](Operation& op) { op.kind = static_cast<OperationKind>(5); });
  for (const Operation& op : bad) {
    EXPECT_THAT(EncodeOperationRecord(op, TestMac()),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << op.reason << " " << op.id;
  }
}

TEST(OperationRecordTest, DecodingRefusesMalformedOrSmuggledRecords) {
  const std::string good = *EncodeOperationRecord(SampleOperation(), TestMac());
  // Every truncation, a byte more, another version, an unknown state.
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_THAT(DecodeOperationRecord(good.substr(0, n), TestMac()),
                StatusIs(absl::StatusCode::kDataLoss))
        << n;
  }
  EXPECT_THAT(DecodeOperationRecord(good + "x", TestMac()),
              StatusIs(absl::StatusCode::kDataLoss));
  for (size_t pos : {0, 1, 2}) {
    std::string other = good;
    other[pos] = '\x09';
    EXPECT_THAT(DecodeOperationRecord(other, TestMac()),
                StatusIs(absl::StatusCode::kDataLoss));
  }
  // A record written by something that did not apply the rules: a PAN in
  // the reason or an identity, of the same lengths as the good one's.
  Operation op = SampleOperation();
  op.reason = std::string(16, 'r');
  op.approvers[1] = std::string(16, 'a');
  std::string record = *EncodeOperationRecord(op, TestMac());
  ASSERT_THAT(DecodeOperationRecord(record, TestMac()), IsOk());
  std::string in_reason = record;
  in_reason.replace(in_reason.find(op.reason), 16, kSmuggledPan);
  EXPECT_THAT(DecodeOperationRecord(Resigned(in_reason, TestMac()), TestMac()),
              StatusIs(absl::StatusCode::kDataLoss));
  std::string in_identity = record;
  in_identity.replace(in_identity.find(op.approvers[1]), 16, kSmuggledPan);
  EXPECT_THAT(
      DecodeOperationRecord(Resigned(in_identity, TestMac()), TestMac()),
      StatusIs(absl::StatusCode::kDataLoss));
}

TEST(OperationRecordTest, OnlyTheOperationKeyMakesARecordThatReads) {
  const std::string good = *EncodeOperationRecord(SampleOperation(), TestMac());
  ASSERT_THAT(DecodeOperationRecord(good, TestMac()), IsOk());
  // Another key, or the same key under another version, does not verify.
  const std::unique_ptr<crypto::HmacSha256> other =
      *crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'x')));
  const OperationMac other_key{.mac = other.get(), .version = 1};
  const OperationMac other_version{.mac = TestMac().mac, .version = 2};
  EXPECT_THAT(DecodeOperationRecord(good, other_key),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("verify")));
  EXPECT_THAT(DecodeOperationRecord(good, other_version),
              StatusIs(absl::StatusCode::kDataLoss));
  // A database writer adding an approver, or moving the state on, without
  // the key: every byte it changes breaks the MAC.
  Operation op = SampleOperation();
  std::string forged = *EncodeOperationRecord(op, other_key);
  EXPECT_THAT(DecodeOperationRecord(forged, TestMac()),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("verify")));
  for (size_t pos = 1; pos < good.size(); ++pos) {
    std::string changed = good;
    changed[pos] = static_cast<char>(changed[pos] ^ 0x01);
    EXPECT_THAT(DecodeOperationRecord(changed, TestMac()),
                StatusIs(absl::StatusCode::kDataLoss))
        << pos;
  }
  // A format-1 record (no MAC) is not read.
  std::string v1 = good.substr(0, good.size() - 36);
  v1[0] = '\x01';
  EXPECT_THAT(DecodeOperationRecord(v1, TestMac()),
              StatusIs(absl::StatusCode::kDataLoss));
}

// Two nodes on one PostgreSQL database: each its own PostgresStore, audit
// write path, KEK manager, key ring, vault and KeyAdmin; the "HSM" and the
// policy shared, as the nodes of one cluster share them.
const ::testing::Environment* const kPostgresEnvironment =
    ::testing::AddGlobalTestEnvironment(new testing::SharedPostgresServer);

class KeyAdminOnPostgresTest : public ::testing::Test {
 protected:
  struct Node {
    std::unique_ptr<storage::PostgresStore> store;
    std::unique_ptr<commit::WritePath> audit;
    std::unique_ptr<KekManager> kek;
    std::unique_ptr<KeyRing> ring;
    std::unique_ptr<CvvCache> cvv_cache;
    std::unique_ptr<Vault> vault;
    std::unique_ptr<Reencryptor> reencryptor;
    std::unique_ptr<KeyAdmin> admin;
  };

  void SetUp() override {
    testing::PostgresServer* server = testing::SharedPostgresServer::server();
    ASSERT_NE(server, nullptr);
    // A new database per test (and per round of --gtest_repeat).
    static int databases = 0;
    const std::string database = absl::StrCat("key_admin_", databases++);
    auto admin = storage::PgConnection::Connect(server->conninfo("postgres"));
    ASSERT_THAT(admin, IsOk());
    ASSERT_THAT(admin->Exec(absl::StrCat("CREATE DATABASE ", database)),
                IsOk());
    conninfo_ = server->conninfo(database);
    ASSERT_THAT(storage::MigratePostgres(conninfo_), IsOk());
    auth::PolicySpec spec;
    spec.purposes = {"authorization"};
    spec.bindings = {
        {kPos.identity, {auth::Role::kTokenizer}, {"m1/pos"}, {}, {}},
        {kAuditor.identity, {auth::Role::kAuditor}, {}, {}, {}}};
    for (const auth::Caller* a : {&kAdmin1, &kAdmin2, &kAdmin3}) {
      spec.bindings.push_back({a->identity, {auth::Role::kAdmin}, {}, {}, {}});
    }
    policy_ =
        std::make_unique<auth::PolicyHolder>(*auth::AccessPolicy::Create(spec));
    index_key_ =
        *crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'i')));
    fingerprint_key_ =
        *crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'f')));
    for (int i = 0; i < 2; ++i) {
      nodes_.push_back(OpenNode(absl::StrCat("node-", i)));
      if (HasFatalFailure()) return;
    }
  }
  // A Node's members go in reverse order: its store last.
  void TearDown() override { nodes_.clear(); }

  Node OpenNode(const std::string& name) {
    Node n;
    auto store = storage::PostgresStore::Open(
        {.conninfo = conninfo_, .pool_size = 4, .expiry_of = StoredExpiry});
    EXPECT_THAT(store, IsOk());
    if (!store.ok()) return n;
    n.store = *std::move(store);
    commit::WritePath::Options audit_options;
    audit_options.node = name;
    n.audit = *commit::WritePath::Open(
        n.store.get(), n.store.get(),
        *crypto::HmacSha256::Create(crypto::SecretBytes(std::string(32, 'a'))),
        1, std::move(audit_options));
    n.kek = *KekManager::Open(n.store.get(), &wrapper_,
                              {.initial_label = "fake-kek"});
    n.ring = *KeyRing::Load(n.kek.get(), {});
    n.cvv_cache = *CvvCache::Create({.ttl = absl::Minutes(15)});
    n.vault = *Vault::Create({.records = n.store.get(),
                              .keys = n.ring.get(),
                              .index_key = index_key_.get(),
                              .fingerprint_key = fingerprint_key_.get(),
                              .cvv_cache = n.cvv_cache.get(),
                              .policy = policy_.get(),
                              .audit = n.audit.get()},
                             {});
    n.reencryptor =
        *Reencryptor::Create(n.store.get(), n.ring.get(), n.audit.get(), {});
    n.admin = *KeyAdmin::Create({.keys = n.ring.get(),
                                 .kek = n.kek.get(),
                                 .reencryptor = n.reencryptor.get(),
                                 .vault = n.vault.get(),
                                 .policy = policy_.get(),
                                 .audit = n.audit.get(),
                                 .records = n.store.get(),
                                 .operation_mac = TestMac(),
                                 .other_keys = {}},
                                {.node = name});
    return n;
  }

  testing::FakeKeyWrapper wrapper_;
  std::string conninfo_;
  std::unique_ptr<auth::PolicyHolder> policy_;
  std::unique_ptr<crypto::HmacSha256> index_key_;
  std::unique_ptr<crypto::HmacSha256> fingerprint_key_;
  std::vector<Node> nodes_;
};

TEST_F(KeyAdminOnPostgresTest, ProposedOnOneNodeApprovedOnTheOther) {
  Card card;
  card.pan = crypto::SecretBytes("4111111111111111");
  card.exp_month = 12;
  card.exp_year = 2039;
  ASSERT_THAT(nodes_[0].vault->Tokenize(kPos, std::move(card)), IsOk());
  auto op = nodes_[0].admin->Propose(kAdmin1, OperationKind::kReencryptAll, 0,
                                     "re-encrypt after the rotation");
  ASSERT_THAT(op, IsOk());
  auto listed = nodes_[1].admin->ListOperations(kAuditor);
  ASSERT_THAT(listed, IsOk());
  ASSERT_THAT(*listed, SizeIs(1));
  EXPECT_EQ((*listed)[0].id, op->id);
  EXPECT_EQ((*listed)[0].state, OperationState::kPending);
  EXPECT_THAT(
      nodes_[1].admin->Approve(kAdmin1, op->id),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("distinct")));
  // Both other admins at once, one on each node: one execution.
  absl::StatusOr<Operation> results[2] = {absl::UnknownError(""),
                                          absl::UnknownError("")};
  std::thread second(
      [&] { results[1] = nodes_[0].admin->Approve(kAdmin3, op->id); });
  results[0] = nodes_[1].admin->Approve(kAdmin2, op->id);
  second.join();
  int executed = 0;
  for (const auto& r : results) {
    if (r.ok()) {
      EXPECT_EQ(r->state, OperationState::kExecuted) << r->outcome;
      EXPECT_THAT(r->outcome, HasSubstr("re-encrypted"));
      ++executed;
    } else {
      EXPECT_THAT(r, StatusIs(absl::StatusCode::kFailedPrecondition));
    }
  }
  EXPECT_EQ(executed, 1);
  listed = nodes_[0].admin->ListOperations(kAuditor);
  ASSERT_THAT(listed, IsOk());
  ASSERT_THAT(*listed, SizeIs(1));
  EXPECT_EQ((*listed)[0].state, OperationState::kExecuted);
  // One chain for both nodes: one execution record in it.
  int executions = 0;
  ASSERT_THAT(nodes_[1].audit->Scan(1,
                                    [&](const audit::AuditEvent& e) {
                                      executions += absl::StartsWith(
                                          e.detail(), "executed operation");
                                      return true;
                                    }),
              IsOk());
  EXPECT_EQ(executions, 1);
  // A node started afterwards sees the same.
  Node third = OpenNode("node-2");
  listed = third.admin->ListOperations(kAuditor);
  ASSERT_THAT(listed, IsOk());
  ASSERT_THAT(*listed, SizeIs(1));
  EXPECT_EQ((*listed)[0].state, OperationState::kExecuted);
}

TEST_F(KeyAdminOnPostgresTest, APendingProposalSurvivesEveryNodeRestarting) {
  auto op =
      nodes_[0].admin->Propose(kAdmin1, OperationKind::kReencryptAll, 0, "");
  ASSERT_THAT(op, IsOk());
  TearDown();
  Node restarted = OpenNode("node-1");
  auto approved = restarted.admin->Approve(kAdmin2, op->id);
  ASSERT_THAT(approved, IsOk());
  EXPECT_EQ(approved->state, OperationState::kExecuted) << approved->outcome;
}

}  // namespace
}  // namespace cardvault::vault
