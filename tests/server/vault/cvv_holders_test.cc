#include "server/vault/cvv_holders.h"

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/vault/index_entry.h"
#include "server/vault/vault.h"
#include "tests/server/vault/vault_fixture.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::vault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(CvvHolderRowTest, RoundTripsAndIsDocumentedByteByByte) {
  const absl::Time expires = absl::FromUnixMillis(1764000000123);
  absl::StatusOr<std::string> row =
      EncodeCvvHolder({.expires = expires, .address = "node-a:9443"});
  ASSERT_THAT(row, IsOk());
  ASSERT_EQ(row->size(), 1u + 8 + 1 + 11);
  EXPECT_EQ(static_cast<uint8_t>((*row)[0]), kCvvHolderFormatV1);
  EXPECT_EQ(static_cast<uint8_t>((*row)[9]), 11);
  EXPECT_EQ(row->substr(10), "node-a:9443");
  absl::StatusOr<CvvHolder> back = DecodeCvvHolder(*row);
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(back->expires, expires);
  EXPECT_EQ(back->address, "node-a:9443");
}

TEST(CvvHolderRowTest, RefusesAddressesThatCouldHoldCardData) {
  for (const std::string& address :
       {std::string(), std::string(256, 'a'), std::string("node a:1"),
        std::string("4111111111111111:9443"),
        std::string("n4111-1111-1111-1111:1"), std::string("node\n:1")}) {
    EXPECT_THAT(
        EncodeCvvHolder({.expires = absl::UnixEpoch(), .address = address}),
        StatusIs(absl::StatusCode::kInvalidArgument))
        << address;
  }
}

TEST(CvvHolderRowTest, RefusesRowsNotInFormatOne) {
  std::string row = *EncodeCvvHolder(
      {.expires = absl::FromUnixSeconds(5), .address = "node-a:9443"});
  std::string other_version = row;
  other_version[0] = 0x02;
  std::string short_length = row;
  short_length[9] = 3;
  std::string pan_inside = row.substr(0, 9);
  pan_inside.push_back(16);
  pan_inside.append("4111111111111111");
  for (const std::string& bad : {std::string(), row.substr(0, 9), other_version,
                                 short_length, row + "x", pan_inside}) {
    EXPECT_THAT(DecodeCvvHolder(bad), StatusIs(absl::StatusCode::kDataLoss));
  }
}

TEST(CvvHolderRowTest, TheSweepExpiresHolderRowsAndNoOtherSharedRow) {
  const absl::Time expires = absl::FromUnixSeconds(1000);
  const std::string row =
      *EncodeCvvHolder({.expires = expires, .address = "node-a:9443"});
  EXPECT_EQ(StoredExpiry(storage::Table::kShared, CvvHolderKey("tok_x"), row),
            expires);
  // The same bytes under a lease's key are not the TTL sweep's to delete.
  EXPECT_EQ(StoredExpiry(storage::Table::kShared, "lease/background", row),
            absl::InfiniteFuture());
  EXPECT_EQ(StoredExpiry(storage::Table::kShared, CvvHolderKey("tok_x"),
                         "not a holder row"),
            absl::InfiniteFuture());
}

inline const auth::Caller kNode = MakeCaller("node");

// Other nodes in this process: each "node" is a Vault with its own CVV
// cache over the fixture's store. Calls complete on their own thread, as
// gRPC's do.
class LoopbackPeers final : public CvvPeers {
 public:
  ~LoopbackPeers() override {
    absl::MutexLock lock(&mu_);
    for (std::thread& t : threads_) t.join();
  }
  void Add(std::string address, const Vault* vault) {
    absl::MutexLock lock(&mu_);
    nodes_[std::move(address)] = vault;
  }
  void FailWith(absl::Status status) {
    absl::MutexLock lock(&mu_);
    failure_ = std::move(status);
  }
  int calls() const {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  void TakeHeldCvv(absl::string_view holder, absl::string_view token,
                   TakeDone done) const override {
    absl::MutexLock lock(&mu_);
    ++calls_;
    const Vault* node = nullptr;
    if (auto it = nodes_.find(std::string(holder)); it != nodes_.end()) {
      node = it->second;
    }
    threads_.emplace_back([node, failure = failure_, token = std::string(token),
                           done = std::move(done)]() mutable {
      if (!failure.ok()) {
        std::move(done)(failure);
      } else if (node == nullptr) {
        std::move(done)(absl::UnavailableError("no such node"));
      } else {
        std::move(done)(node->ReleaseHeldCvv(kNode, token));
      }
    });
  }

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, const Vault*> nodes_ ABSL_GUARDED_BY(mu_);
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  mutable int calls_ ABSL_GUARDED_BY(mu_) = 0;
  mutable std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

class TwoNodeCvvTest : public VaultTest {
 protected:
  void SetUp() override {
    VaultTest::SetUp();
    spec_.bindings.push_back({kNode.identity, {auth::Role::kNode}, {}, {}, {}});
    ApplyPolicy();
    for (int i = 0; i < 2; ++i) {
      caches_.push_back(*CvvCache::Create({.ttl = absl::Minutes(15)}));
      Vault::Dependencies deps = Deps();
      deps.cvv_cache = caches_.back().get();
      deps.cvv_peers = &peers_;
      Vault::Options options;
      options.node_address = absl::StrCat("node-", i, ":9443");
      options.now = [this] { return Now(); };
      nodes_.push_back(*Vault::Create(deps, std::move(options)));
      peers_.Add(absl::StrCat("node-", i, ":9443"), nodes_.back().get());
    }
  }
  void TearDown() override {
    nodes_.clear();
    VaultTest::TearDown();
  }
  static TokenizeRequest WithCvv(absl::string_view pan, absl::string_view cvv) {
    TokenizeRequest r;
    r.card = MakeCard(pan);
    r.cvv = crypto::SecretBytes(cvv);
    return r;
  }
  std::vector<audit::AuditEvent> EventsOf(v1::EventType type) {
    std::vector<audit::AuditEvent> out;
    for (const audit::AuditEvent& e : Events()) {
      if (e.event_type() == type) out.push_back(e);
    }
    return out;
  }

  LoopbackPeers peers_;
  std::vector<std::unique_ptr<CvvCache>> caches_;
  std::vector<std::unique_ptr<Vault>> nodes_;
};

TEST_F(TwoNodeCvvTest, ACvvGivenToOneNodeIsReturnedOnceByTheOther) {
  auto t = nodes_[0]->Tokenize(kPos, WithCvv("4111111111111111", "7391"));
  ASSERT_THAT(t, IsOk());
  auto first = nodes_[1]->Detokenize(kProcessor, t->token, "authorization");
  ASSERT_THAT(first, IsOk());
  ASSERT_TRUE(first->cvv.has_value());
  EXPECT_EQ(first->cvv->view(), "7391");
  EXPECT_EQ(caches_[0]->size(), 0u);
  // The row went with the CVV: nobody asks node 0 again.
  EXPECT_THAT(store_->Get(storage::Table::kShared, CvvHolderKey(t->token)),
              StatusIs(absl::StatusCode::kNotFound));
  for (int node = 0; node < 2; ++node) {
    auto again =
        nodes_[node]->Detokenize(kProcessor, t->token, "authorization");
    ASSERT_THAT(again, IsOk());
    EXPECT_FALSE(again->cvv.has_value()) << node;
  }
  // The holder recorded the release, and the asking node whom it asked.
  const std::vector<audit::AuditEvent> releases = EventsOf(v1::CVV_RELEASE);
  ASSERT_GE(releases.size(), 1u);
  EXPECT_EQ(releases[0].token(), t->token);
  EXPECT_EQ(releases[0].detail(), "cvv released");
  EXPECT_EQ(releases[0].identity(), kNode.identity);
  bool asked = false;
  for (const audit::AuditEvent& e : EventsOf(v1::DETOKENIZE)) {
    asked |= absl::StrContains(e.detail(), "cvv-asked-of node-0:9443");
    EXPECT_THAT(e.DebugString(), Not(HasSubstr("7391")));
  }
  EXPECT_TRUE(asked);
  EXPECT_EQ(peers_.calls(), 1);
  for (const audit::AuditEvent& e : Events()) {
    EXPECT_THAT(e.DebugString(), Not(HasSubstr("7391")));
  }
}

TEST_F(TwoNodeCvvTest, APurposeWithoutTheCvvDoesNotAskTheHolder) {
  auto t = nodes_[0]->Tokenize(kPos, WithCvv("4111111111111111", "7391"));
  ASSERT_THAT(t, IsOk());
  auto refund = nodes_[1]->Detokenize(kProcessor, t->token, "refund");
  ASSERT_THAT(refund, IsOk());
  EXPECT_FALSE(refund->cvv.has_value());
  EXPECT_EQ(peers_.calls(), 0);
  // Still held for the authorization.
  auto auth = nodes_[1]->Detokenize(kProcessor, t->token, "authorization");
  ASSERT_THAT(auth, IsOk());
  ASSERT_TRUE(auth->cvv.has_value());
  EXPECT_EQ(auth->cvv->view(), "7391");
}

TEST_F(TwoNodeCvvTest, TheNodeHoldingTheCvvAsksNobody) {
  auto t = nodes_[0]->Tokenize(kPos, WithCvv("4111111111111111", "123"));
  ASSERT_THAT(t, IsOk());
  auto card = nodes_[0]->Detokenize(kProcessor, t->token, "authorization");
  ASSERT_THAT(card, IsOk());
  ASSERT_TRUE(card->cvv.has_value());
  auto again = nodes_[0]->Detokenize(kProcessor, t->token, "authorization");
  ASSERT_THAT(again, IsOk());
  EXPECT_FALSE(again->cvv.has_value());
  EXPECT_EQ(peers_.calls(), 0);
}

TEST_F(TwoNodeCvvTest, AnUnreachableHolderCostsTheCvvNotTheCard) {
  auto t = nodes_[0]->Tokenize(kPos, WithCvv("4111111111111111", "123"));
  ASSERT_THAT(t, IsOk());
  peers_.FailWith(absl::UnavailableError("connection refused"));
  auto card = nodes_[1]->Detokenize(kProcessor, t->token, "authorization");
  ASSERT_THAT(card, IsOk());
  EXPECT_EQ(card->card.pan.view(), "4111111111111111");
  EXPECT_FALSE(card->cvv.has_value());
}

TEST_F(TwoNodeCvvTest, AHolderRowPastTheCvvTtlIsNotAsked) {
  auto t = nodes_[0]->Tokenize(kPos, WithCvv("4111111111111111", "123"));
  ASSERT_THAT(t, IsOk());
  Advance(absl::Minutes(15));
  auto card = nodes_[1]->Detokenize(kProcessor, t->token, "authorization");
  ASSERT_THAT(card, IsOk());
  EXPECT_FALSE(card->cvv.has_value());
  EXPECT_EQ(peers_.calls(), 0);
}

TEST_F(TwoNodeCvvTest, ABatchTakesEachItemsCvvFromItsHolder) {
  std::vector<std::string> tokens;
  for (int i = 0; i < 4; ++i) {
    auto t = nodes_[i % 2]->Tokenize(
        kPos, WithCvv(i % 2 ? "5555555555554444" : "4111111111111111",
                      absl::StrCat(100 + i)));
    ASSERT_THAT(t, IsOk());
    tokens.push_back(t->token);
  }
  std::vector<DetokenizeRequest> batch;
  for (const std::string& token : tokens) {
    batch.push_back({token, "authorization"});
  }
  auto results = nodes_[1]->DetokenizeBatch(kProcessor, batch);
  ASSERT_THAT(results, IsOk());
  ASSERT_EQ(results->size(), 4u);
  for (int i = 0; i < 4; ++i) {
    ASSERT_THAT((*results)[i], IsOk());
    ASSERT_TRUE((*results)[i]->cvv.has_value()) << i;
    EXPECT_EQ((*results)[i]->cvv->view(), absl::StrCat(100 + i));
  }
  EXPECT_EQ(peers_.calls(), 2);  // only node 0's items
}

TEST_F(TwoNodeCvvTest, OnlyTheNodeRoleMayTakeAHeldCvv) {
  auto t = nodes_[0]->Tokenize(kPos, WithCvv("4111111111111111", "123"));
  ASSERT_THAT(t, IsOk());
  for (const auth::Caller& caller : {kPos, kProcessor, kAuditor, kStranger}) {
    EXPECT_THAT(nodes_[0]->ReleaseHeldCvv(caller, t->token),
                StatusIs(absl::StatusCode::kPermissionDenied))
        << caller.identity;
  }
  // Nor may a node's identity do anything but that.
  EXPECT_THAT(nodes_[0]->Tokenize(kNode, MakeCard("5555555555554444")),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(nodes_[0]->Detokenize(kNode, t->token, "authorization"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  // The CVV is still there for the processor.
  auto card = nodes_[1]->Detokenize(kProcessor, t->token, "authorization");
  ASSERT_THAT(card, IsOk());
  EXPECT_TRUE(card->cvv.has_value());
}

TEST_F(TwoNodeCvvTest, AMalformedTokenIsRefusedAndRecordedAsAMarker) {
  for (const std::string& token :
       {std::string("4111111111111111"), std::string(5000, 'x'),
        std::string("tok_\n4111111111111111")}) {
    auto released = nodes_[0]->ReleaseHeldCvv(kNode, token);
    EXPECT_THAT(released, StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(released.status().message(), Not(HasSubstr("4111")));
  }
  for (const audit::AuditEvent& e : EventsOf(v1::CVV_RELEASE)) {
    EXPECT_THAT(e.DebugString(), Not(HasSubstr("41111111")));
    EXPECT_LT(e.token().size(), 200u);
  }
}

TEST_F(TwoNodeCvvTest, ADeletedTokensCvvIsAskedOfNobody) {
  auto t = nodes_[0]->Tokenize(kPos, WithCvv("4111111111111111", "123"));
  ASSERT_THAT(t, IsOk());
  EXPECT_THAT(store_->Get(storage::Table::kShared, CvvHolderKey(t->token)),
              IsOk());
  ASSERT_THAT(nodes_[1]->DeleteToken(kPos, t->token), IsOk());
  EXPECT_THAT(store_->Get(storage::Table::kShared, CvvHolderKey(t->token)),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(TwoNodeCvvTest, ARetryWithTheSameIdempotencyKeyDoesNotMoveTheHolder) {
  TokenizeRequest first = WithCvv("4111111111111111", "123");
  first.idempotency_key = "checkout-9";
  auto t = nodes_[0]->Tokenize(kPos, std::move(first));
  ASSERT_THAT(t, IsOk());
  TokenizeRequest retry = WithCvv("4111111111111111", "123");
  retry.idempotency_key = "checkout-9";
  auto again = nodes_[1]->Tokenize(kPos, std::move(retry));
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->token, t->token);
  // Node 1 holds nothing; node 0 still does and is still named.
  EXPECT_EQ(caches_[1]->size(), 0u);
  auto card = nodes_[1]->Detokenize(kProcessor, t->token, "authorization");
  ASSERT_THAT(card, IsOk());
  ASSERT_TRUE(card->cvv.has_value());
  EXPECT_EQ(card->cvv->view(), "123");
}

TEST_F(TwoNodeCvvTest, AVaultThatAsksOtherNodesNeedsItsOwnAddress) {
  for (const std::string& address :
       {std::string(), std::string("4111111111111111:1")}) {
    Vault::Dependencies deps = Deps();
    deps.cvv_peers = &peers_;
    Vault::Options options;
    options.node_address = address;
    EXPECT_THAT(Vault::Create(deps, std::move(options)),
                StatusIs(absl::StatusCode::kInvalidArgument));
  }
}

// ---- Hostile tests (review of "CVVs across nodes") ----

// One node, deterministic: the newest CVV for a card replaces the one held.
// Two nodes: the first node's copy survives the move of the row, so both
// CVVs leave (the same CVV twice when the client sent the same one).
TEST_F(TwoNodeCvvTest,
       HostileDeterministicRetokenizeOnTheOtherNodeReplacesTheHeldCvv) {
  for (const std::string& second_cvv :
       {std::string("456"), std::string("123")}) {
    TokenizeRequest first = WithCvv("4111111111111111", "123");
    first.deterministic = true;
    auto t = nodes_[0]->Tokenize(kPos, std::move(first));
    ASSERT_THAT(t, IsOk());
    TokenizeRequest again = WithCvv("4111111111111111", second_cvv);
    again.deterministic = true;
    auto t2 = nodes_[1]->Tokenize(kPos, std::move(again));
    ASSERT_THAT(t2, IsOk());
    ASSERT_EQ(t2->token, t->token);
    int released = 0;
    for (int node : {0, 0, 1, 1}) {
      auto card =
          nodes_[node]->Detokenize(kProcessor, t->token, "authorization");
      ASSERT_THAT(card, IsOk());
      if (card->cvv.has_value()) {
        ++released;
        EXPECT_EQ(card->cvv->view(), second_cvv)
            << "stale CVV from node " << node;
      }
    }
    EXPECT_EQ(released, 1) << "CVVs released for one token (second cvv "
                           << second_cvv << ")";
    ASSERT_THAT(nodes_[0]->DeleteToken(kPos, t->token), IsOk());
  }
}

// Two nodes asking the holder at once: one CVV leaves, so one record may
// say "cvv released".
TEST_F(TwoNodeCvvTest, HostileConcurrentTakesRecordOneReleasePerCvv) {
  constexpr int kTokens = 40;
  int returned = 0;
  for (int i = 0; i < kTokens; ++i) {
    auto t = nodes_[0]->Tokenize(kPos, WithCvv("4111111111111111", "123"));
    ASSERT_THAT(t, IsOk());
    absl::StatusOr<std::optional<crypto::SecretBytes>> a, b;
    std::thread x([&] { a = nodes_[0]->ReleaseHeldCvv(kNode, t->token); });
    std::thread y([&] { b = nodes_[0]->ReleaseHeldCvv(kNode, t->token); });
    x.join();
    y.join();
    ASSERT_THAT(a, IsOk());
    ASSERT_THAT(b, IsOk());
    returned += a->has_value() + b->has_value();
  }
  EXPECT_EQ(returned, kTokens);
  int recorded = 0;
  for (const audit::AuditEvent& e : EventsOf(v1::CVV_RELEASE)) {
    recorded += e.detail() == "cvv released";
  }
  EXPECT_EQ(recorded, kTokens)
      << "records claiming a release of " << kTokens << " CVVs";
}

// One node refuses a retry with the key of a request given another CVV;
// the other node, which holds none, takes it as a replay and drops the new
// CVV (the first one stays held). Known gap (docs/multinode.md, "CVVs
// across nodes"): comparing would need the CVV sent to the holder or a
// digest of it stored. Disabled until then.
TEST_F(TwoNodeCvvTest,
       DISABLED_HostileAnIdempotentRetryWithAnotherCvvIsRefusedOnEitherNode) {
  TokenizeRequest first = WithCvv("4111111111111111", "123");
  first.idempotency_key = "checkout-7";
  ASSERT_THAT(nodes_[0]->Tokenize(kPos, std::move(first)), IsOk());
  for (int node : {0, 1}) {
    TokenizeRequest retry = WithCvv("4111111111111111", "999");
    retry.idempotency_key = "checkout-7";
    EXPECT_THAT(nodes_[node]->Tokenize(kPos, std::move(retry)),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << "node " << node;
  }
}

// After DeleteToken (on another node), or past the token's TTL, no
// Detokenize can return the CVV; a NODE identity still can.
TEST_F(TwoNodeCvvTest, HostileANodeIdentityGetsNoCvvOfADeletedOrExpiredToken) {
  auto deleted = nodes_[0]->Tokenize(kPos, WithCvv("4111111111111111", "123"));
  ASSERT_THAT(deleted, IsOk());
  ASSERT_THAT(nodes_[1]->DeleteToken(kPos, deleted->token), IsOk());
  auto from_deleted = nodes_[0]->ReleaseHeldCvv(kNode, deleted->token);
  ASSERT_THAT(from_deleted, IsOk());
  EXPECT_FALSE(from_deleted->has_value()) << "CVV of a deleted token released";

  TokenizeRequest short_lived = WithCvv("5555555555554444", "456");
  short_lived.ttl = absl::Seconds(5);
  auto expired = nodes_[0]->Tokenize(kPos, std::move(short_lived));
  ASSERT_THAT(expired, IsOk());
  Advance(absl::Seconds(10));
  EXPECT_THAT(
      nodes_[0]->Detokenize(kProcessor, expired->token, "authorization"),
      StatusIs(absl::StatusCode::kNotFound));
  auto from_expired = nodes_[0]->ReleaseHeldCvv(kNode, expired->token);
  ASSERT_THAT(from_expired, IsOk());
  EXPECT_FALSE(from_expired->has_value()) << "CVV of an expired token released";
}

}  // namespace
}  // namespace cardvault::vault
