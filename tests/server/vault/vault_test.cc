#include "server/vault/vault.h"

#include <map>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::vault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// In-memory TokenStore with switchable failures.
class FakeTokenStore : public storage::TokenStore {
 public:
  absl::Status Insert(absl::string_view token,
                      absl::string_view record) const override {
    absl::MutexLock lock(&mu_);
    if (!fail_with_.ok()) return fail_with_;
    if (collisions_left_ > 0) {
      --collisions_left_;
      return absl::AlreadyExistsError("taken");
    }
    if (!records_.emplace(token, record).second) {
      return absl::AlreadyExistsError("taken");
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> Lookup(absl::string_view token) const override {
    absl::MutexLock lock(&mu_);
    if (!fail_with_.ok()) return fail_with_;
    auto it = records_.find(token);
    if (it == records_.end()) return absl::NotFoundError("none");
    return it->second;
  }
  void FailWith(absl::Status s) {
    absl::MutexLock lock(&mu_);
    fail_with_ = s;
  }
  void Collide(int n) {
    absl::MutexLock lock(&mu_);
    collisions_left_ = n;
  }
  size_t size() const {
    absl::MutexLock lock(&mu_);
    return records_.size();
  }

 private:
  mutable absl::Mutex mu_;
  mutable absl::flat_hash_map<std::string, std::string> records_
      ABSL_GUARDED_BY(mu_);
  absl::Status fail_with_ ABSL_GUARDED_BY(mu_);
  mutable int collisions_left_ ABSL_GUARDED_BY(mu_) = 0;
};

const auth::Caller kPos{"spiffe://t/pos", "ipv4:127.0.0.1:1"};
const auth::Caller kProcessor{"spiffe://t/processor", "ipv4:127.0.0.1:2"};
const auth::Caller kAuditor{"spiffe://t/auditor", "ipv4:127.0.0.1:3"};

class VaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::map<uint32_t, crypto::SecretBytes> keys;
    keys.emplace(1, crypto::SecretBytes(std::string(32, 'k')));
    ring_ = *KeyRing::FromKeys(std::move(keys));
    policy_ = *auth::AccessPolicy::Create(
        {{kPos.identity, {auth::Role::kTokenizer}},
         {kProcessor.identity, {auth::Role::kDetokenizer}},
         {kAuditor.identity, {auth::Role::kAuditor}}});
    vault_ = *Vault::Create(&store_, ring_.get(), policy_.get(), {});
  }

  static Card MakeCard(absl::string_view pan) {
    Card c;
    c.pan = crypto::SecretBytes(pan);
    c.exp_month = 12;
    c.exp_year = 2099 - 60;
    return c;
  }

  FakeTokenStore store_;
  std::unique_ptr<KeyRing> ring_;
  std::unique_ptr<auth::AccessPolicy> policy_;
  std::unique_ptr<Vault> vault_;
};

TEST_F(VaultTest, DetokenizeReturnsTheTokenizedCard) {
  auto token = vault_->Tokenize(kPos, MakeCard("4111111111111111"));
  ASSERT_THAT(token, IsOk());
  EXPECT_THAT(*token, StartsWith("tok_"));
  auto card = vault_->Detokenize(kProcessor, *token);
  ASSERT_THAT(card, IsOk());
  EXPECT_EQ(card->pan.view(), "4111111111111111");
  EXPECT_EQ(card->exp_month, 12u);
}

TEST_F(VaultTest, SamePanGetsDifferentTokens) {
  auto a = vault_->Tokenize(kPos, MakeCard("4111111111111111"));
  auto b = vault_->Tokenize(kPos, MakeCard("4111111111111111"));
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_NE(*a, *b);
}

TEST_F(VaultTest, TokenizeIsDeniedWithoutTokenizerRole) {
  for (const auth::Caller& c :
       {kProcessor, kAuditor, auth::Caller{"spiffe://t/stranger", ""}}) {
    EXPECT_THAT(vault_->Tokenize(c, MakeCard("4111111111111111")),
                StatusIs(absl::StatusCode::kPermissionDenied));
  }
  EXPECT_EQ(store_.size(), 0u);
}

TEST_F(VaultTest, DetokenizeIsDeniedWithoutDetokenizerRole) {
  std::string token = *vault_->Tokenize(kPos, MakeCard("4111111111111111"));
  for (const auth::Caller& c :
       {kPos, kAuditor, auth::Caller{"spiffe://t/stranger", ""}}) {
    EXPECT_THAT(vault_->Detokenize(c, token),
                StatusIs(absl::StatusCode::kPermissionDenied));
  }
}

TEST_F(VaultTest, TokenizeRejectsBadCardAndStoresNothing) {
  auto s = vault_->Tokenize(kPos, MakeCard("4111111111111112"));
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument,
                          Not(HasSubstr("4111111111111112"))));
  EXPECT_EQ(store_.size(), 0u);
}

TEST_F(VaultTest, DetokenizeFailsForUnknownToken) {
  EXPECT_THAT(vault_->Detokenize(kProcessor, "tok_aaaaaaaaaaaaaaaaaaaaaaaaaa"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(VaultTest, DetokenizeFailsForMalformedTokenWithoutEcho) {
  EXPECT_THAT(
      vault_->Detokenize(kProcessor, "4111111111111111"),
      StatusIs(absl::StatusCode::kInvalidArgument, Not(HasSubstr("4111"))));
}

TEST_F(VaultTest, StorageOutageIsUnavailable) {
  std::string token = *vault_->Tokenize(kPos, MakeCard("4111111111111111"));
  store_.FailWith(absl::UnavailableError("disk gone"));
  EXPECT_THAT(vault_->Tokenize(kPos, MakeCard("4111111111111111")),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(vault_->Detokenize(kProcessor, token),
              StatusIs(absl::StatusCode::kUnavailable));
  store_.FailWith(absl::OkStatus());
  EXPECT_THAT(vault_->Detokenize(kProcessor, token), IsOk());
}

TEST_F(VaultTest, TokenCollisionIsRetriedWithAFreshToken) {
  store_.Collide(2);
  EXPECT_THAT(vault_->Tokenize(kPos, MakeCard("4111111111111111")), IsOk());
  store_.Collide(3);  // as many as attempts: give up, store nothing
  EXPECT_THAT(vault_->Tokenize(kPos, MakeCard("4111111111111111")),
              StatusIs(absl::StatusCode::kInternal));
  EXPECT_EQ(store_.size(), 1u);
}

}  // namespace
}  // namespace cardvault::vault
