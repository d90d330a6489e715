#include "server/vault/vault.h"

#include <map>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/vault/vault_fixture.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::vault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::IsOkAndHolds;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

TEST_F(VaultTest, DetokenizeReturnsTheTokenizedCard) {
  auto token = vault_->Tokenize(kPos, MakeCard("4111111111111111"));
  ASSERT_THAT(token, IsOk());
  EXPECT_THAT(token->token, StartsWith("tok_"));
  EXPECT_EQ(token->domain, "m1/pos");  // the caller's default
  auto opened = vault_->Detokenize(kProcessor, token->token, "authorization");
  ASSERT_THAT(opened, IsOk());
  EXPECT_EQ(opened->card.pan.view(), "4111111111111111");
  EXPECT_EQ(opened->card.exp_month, 12u);
  EXPECT_EQ(opened->domain, "m1/pos");
}

TEST_F(VaultTest, AsyncCallsAnswerOnlyOnceTheirRecordsAreDurable) {
  absl::Notification tokenized;
  absl::StatusOr<Tokenized> token;
  absl::StatusOr<std::string> stored_when_answered;
  TokenizeRequest request;
  request.card = MakeCard("4111111111111111");
  vault_->TokenizeAsync(
      kPos, std::move(request), [&](absl::StatusOr<Tokenized> t) {
        if (t.ok()) {
          stored_when_answered = store_->Get(storage::Table::kTokens, t->token);
        }
        token = std::move(t);
        tokenized.Notify();
      });
  tokenized.WaitForNotification();
  ASSERT_THAT(token, IsOk());
  EXPECT_THAT(stored_when_answered, IsOk());
  const size_t events_before = Events().size();
  absl::Notification detokenized;
  absl::StatusOr<Detokenized> card;
  size_t events_when_answered = 0;
  vault_->DetokenizeAsync(kProcessor, {token->token, "authorization"},
                          [&](absl::StatusOr<Detokenized> c) {
                            events_when_answered = Events().size();
                            card = std::move(c);
                            detokenized.Notify();
                          });
  detokenized.WaitForNotification();
  ASSERT_THAT(card, IsOk());
  EXPECT_EQ(card->card.pan.view(), "4111111111111111");
  // Its audit record was durable before the card was handed over.
  EXPECT_EQ(events_when_answered, events_before + 1);
  absl::Notification described;
  absl::StatusOr<TokenInfo> info;
  vault_->GetTokenInfoAsync(kAuditor, token->token,
                            [&](absl::StatusOr<TokenInfo> i) {
                              info = std::move(i);
                              described.Notify();
                            });
  described.WaitForNotification();
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->last_four, "1111");
  EXPECT_EQ(Events().back().event_type(), v1::TOKEN_INFO);
  EXPECT_EQ(Events().back().identity(), kAuditor.identity);
}

TEST_F(VaultTest, SamePanGetsDifferentTokens) {
  auto a = vault_->Tokenize(kPos, MakeCard("4111111111111111"));
  auto b = vault_->Tokenize(kPos, MakeCard("4111111111111111"));
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_NE(a->token, b->token);
}

TEST_F(VaultTest, TokenizeIsDeniedWithoutTokenizerRole) {
  for (const auth::Caller& c : {kProcessor, kAuditor, kStranger}) {
    EXPECT_THAT(vault_->Tokenize(c, MakeCard("4111111111111111")),
                StatusIs(absl::StatusCode::kPermissionDenied));
  }
  EXPECT_EQ(TokenCount(), 0u);
}

TEST_F(VaultTest, DetokenizeIsDeniedWithoutDetokenizerRole) {
  std::string token =
      vault_->Tokenize(kPos, MakeCard("4111111111111111"))->token;
  for (const auth::Caller& c : {kPos, kAuditor, kStranger}) {
    EXPECT_THAT(vault_->Detokenize(c, token, "authorization"),
                StatusIs(absl::StatusCode::kPermissionDenied));
  }
}

TEST_F(VaultTest, TokenizeRejectsBadCardAndStoresNothing) {
  auto s = vault_->Tokenize(kPos, MakeCard("4111111111111112"));
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument,
                          Not(HasSubstr("4111111111111112"))));
  EXPECT_EQ(TokenCount(), 0u);
}

TEST_F(VaultTest, DetokenizeFailsForUnknownToken) {
  EXPECT_THAT(vault_->Detokenize(kProcessor, "tok_aaaaaaaaaaaaaaaaaaaaaaaaaa",
                                 "authorization"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(VaultTest, DetokenizeFailsForMalformedTokenWithoutEcho) {
  EXPECT_THAT(
      vault_->Detokenize(kProcessor, "4111111111111111", "refund"),
      StatusIs(absl::StatusCode::kInvalidArgument, Not(HasSubstr("4111"))));
}

TEST_F(VaultTest, DetokenizeFailsClosedWhenTheAuditWriteFails) {
  std::string token =
      vault_->Tokenize(kPos, MakeCard("4111111111111111"))->token;
  store_->FailCommits(true);
  auto card = vault_->Detokenize(kProcessor, token, "authorization");
  EXPECT_THAT(card,
              StatusIs(absl::StatusCode::kUnavailable, Not(HasSubstr("4111"))));
  EXPECT_THAT(vault_->Tokenize(kPos, MakeCard("5555555555554444")),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_GE(audit_->write_failures(), 2u);
  store_->FailCommits(false);
  card = vault_->Detokenize(kProcessor, token, "authorization");
  ASSERT_THAT(card, IsOk());
  EXPECT_EQ(card->card.pan.view(), "4111111111111111");
}

TEST_F(VaultTest, EveryCallIsAuditedWithItsOutcomeAndNoPan) {
  const std::string token =
      vault_->Tokenize(kPos, MakeCard("4111111111111111"))->token;  // 1 ok
  (void)vault_->Tokenize(kPos, MakeCard("4111111111111112"));       // 2 invalid
  (void)vault_->Tokenize(kAuditor, MakeCard("4111111111111111"));   // 3 denied
  (void)vault_->Detokenize(kProcessor, token, "refund");            // 4 ok
  (void)vault_->Detokenize(kPos, token, "refund");                  // 5 denied
  (void)vault_->Detokenize(kProcessor, "tok_aaaaaaaaaaaaaaaaaaaaaaaaaa",
                           "refund");  // 6 unknown
  (void)vault_->Detokenize(kProcessor, "4111111111111111",
                           "refund");  // 7 malformed
  auto events = Events();
  ASSERT_EQ(events.size(), 7u);
  const int want[] = {0, 3, 7, 0, 7, 5, 3};  // OK, INVALID, DENIED, ... codes
  for (size_t i = 0; i < events.size(); ++i) {
    SCOPED_TRACE(i);
    const audit::AuditEvent& e = events[i];
    EXPECT_EQ(e.sequence(), i + 1);
    EXPECT_EQ(e.status_code(), want[i]);
    EXPECT_FALSE(e.identity().empty());
    EXPECT_EQ(e.certificate_serial(), "0A1B");
    EXPECT_EQ(e.certificate_sha256().size(), 64u);
    EXPECT_FALSE(e.peer_address().empty());
    EXPECT_FALSE(e.request_id().empty());
    EXPECT_GT(e.event_time().seconds(), 0);
    EXPECT_THAT(e.rpc(), HasSubstr("/cardvault.v1.TokenVault/"));
    EXPECT_THAT(e.SerializeAsString(), Not(HasSubstr("4111111111111111")));
    EXPECT_THAT(e.SerializeAsString(), Not(HasSubstr("4111111111111112")));
  }
  EXPECT_EQ(events[0].token(), token);
  EXPECT_EQ(events[3].token(), token);
  // A malformed "token" is kept only as a marker of its length and MAC.
  EXPECT_THAT(events[6].token(), StartsWith("<unverified len=16 mac="));
  EXPECT_TRUE(audit_->Verify()->intact);
}

TEST_F(VaultTest, OnlyAuditorsReadTheTrailAndReadsAreAudited) {
  (void)vault_->Tokenize(kPos, MakeCard("4111111111111111"));
  for (const auth::Caller& c : {kPos, kProcessor, kStranger}) {
    EXPECT_THAT(
        vault_->ListAuditEvents(c, {}, [](const auto&) { return true; }),
        StatusIs(absl::StatusCode::kPermissionDenied));
    EXPECT_THAT(vault_->VerifyAuditChain(c),
                StatusIs(absl::StatusCode::kPermissionDenied));
  }
  int seen = 0;
  AuditFilter only_denials;
  only_denials.event_type = v1::LIST_EVENTS;
  ASSERT_THAT(vault_->ListAuditEvents(kAuditor, only_denials,
                                      [&](const audit::AuditEvent&) {
                                        ++seen;
                                        return true;
                                      }),
              IsOk());
  EXPECT_EQ(seen, 4);  // three denied reads and this one
  auto report = vault_->VerifyAuditChain(kAuditor);
  ASSERT_THAT(report, IsOk());
  EXPECT_TRUE(report->intact);
  EXPECT_EQ(report->head_sequence, 9u);  // 1 + 6 denied + list + verify
}

TEST_F(VaultTest, AuditFilterSelectsByIdentityTokenTimeAndLimit) {
  const std::string a =
      vault_->Tokenize(kPos, MakeCard("4111111111111111"))->token;
  const std::string b =
      vault_->Tokenize(kPos, MakeCard("5555555555554444"))->token;
  (void)vault_->Detokenize(kProcessor, a, "authorization");
  auto count = [&](AuditFilter f) {
    int n = 0;
    EXPECT_THAT(vault_->ListAuditEvents(kAuditor, f,
                                        [&](const auto&) {
                                          ++n;
                                          return true;
                                        }),
                IsOk());
    return n;
  };
  AuditFilter by_token;
  by_token.token = a;
  // Tokenize, Detokenize, and the read itself (recorded first, with the
  // token it asked about).
  EXPECT_EQ(count(by_token), 3);
  AuditFilter by_identity;
  by_identity.identity = kProcessor.identity;
  EXPECT_EQ(count(by_identity), 1);
  AuditFilter limited;
  limited.max_events = 2;
  EXPECT_EQ(count(limited), 2);
  AuditFilter future;
  future.start_time = absl::Now() + absl::Hours(1);
  EXPECT_EQ(count(future), 0);
  (void)b;
}

TEST_F(VaultTest, TokenCollisionIsRetriedWithAFreshToken) {
  // A generator that repeats itself, standing in for a 2^-128 event.
  std::vector<std::string> tokens = {"tok_aaaaaaaaaaaaaaaaaaaaaaaaaa",
                                     "tok_aaaaaaaaaaaaaaaaaaaaaaaaaa",
                                     "tok_baaaaaaaaaaaaaaaaaaaaaaaaa"};
  size_t next = 0;
  Vault::Options options;
  options.generate_token = [&]() -> absl::StatusOr<std::string> {
    return tokens[std::min(next++, tokens.size() - 1)];
  };
  auto vault = *Vault::Create(Deps(), options);
  EXPECT_EQ(vault->Tokenize(kPos, MakeCard("4111111111111111"))->token,
            tokens[0]);
  // The second attempt of this call.
  EXPECT_EQ(vault->Tokenize(kPos, MakeCard("5555555555554444"))->token,
            tokens[2]);
  // Only collisions left: give up after max_token_attempts, store nothing.
  EXPECT_THAT(vault->Tokenize(kPos, MakeCard("378282246310005")),
              StatusIs(absl::StatusCode::kInternal));
  auto card = vault->Detokenize(kProcessor, tokens[0], "authorization");
  ASSERT_THAT(card, IsOk());
  EXPECT_EQ(card->card.pan.view(), "4111111111111111");
  EXPECT_EQ(TokenCount(), 2u);
}

TEST_F(VaultTest, TokenIsBoundToItsDomain) {
  auto in_m2 = vault_->Tokenize(kPos, MakeCard("4111111111111111"), "m2/pos");
  ASSERT_THAT(in_m2, IsOk());
  EXPECT_EQ(in_m2->domain, "m2/pos");
  // The processor may detokenize m1/pos only: an m2 token looks unknown.
  auto denied = vault_->Detokenize(kProcessor, in_m2->token, "authorization");
  EXPECT_THAT(denied, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(denied.status().message(), "token not found");
  // Tokenizing into a domain the caller lacks is refused.
  EXPECT_THAT(vault_->Tokenize(kPos, MakeCard("4111111111111111"), "m3/pos"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  auto events = Events();
  EXPECT_EQ(events[1].domain(), "m2/pos");  // the denial names the domain
  EXPECT_EQ(events[1].status_code(),
            static_cast<int>(absl::StatusCode::kNotFound));
  // A domain no binding names is recorded as a marker, never as sent.
  EXPECT_THAT(events[2].domain(), StartsWith("<unverified len=6 mac="));
}

TEST_F(VaultTest, DetokenizeNeedsAListedPurposeWhichIsRecorded) {
  const std::string token =
      vault_->Tokenize(kPos, MakeCard("4111111111111111"))->token;
  EXPECT_THAT(vault_->Detokenize(kProcessor, token, ""),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(vault_->Detokenize(kProcessor, token, "marketing"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_THAT(vault_->Detokenize(kProcessor, token, "refund"), IsOk());
  EXPECT_EQ(Events().back().purpose(), "refund");
}

TEST_F(VaultTest, VelocityLimitTripsIsAuditedAndCounted) {
  const std::string token =
      vault_->Tokenize(kPos, MakeCard("4111111111111111"))->token;
  for (int i = 0; i < 20; ++i) {
    ASSERT_THAT(vault_->Detokenize(kProcessor, token, "authorization"), IsOk());
  }
  EXPECT_THAT(vault_->Detokenize(kProcessor, token, "authorization"),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(vault_->velocity_denials(), 1u);
  EXPECT_EQ(Events().back().status_code(),
            static_cast<int>(absl::StatusCode::kResourceExhausted));
}

TEST_F(VaultTest, VelocityDayCountSurvivesARestart) {
  const std::string token =
      vault_->Tokenize(kPos, MakeCard("4111111111111111"))->token;
  for (int i = 0; i < 15; ++i) {  // per_day is 20 for the processor
    ASSERT_THAT(vault_->Detokenize(kProcessor, token, "authorization"), IsOk());
  }
  // A new vault over the same storage, as after kill -9 and a start.
  Reopen({});
  vault_->ResumeVelocityCounts(*db_->KeyUses());
  for (int i = 0; i < 5; ++i) {
    ASSERT_THAT(vault_->Detokenize(kProcessor, token, "authorization"), IsOk());
  }
  EXPECT_THAT(vault_->Detokenize(kProcessor, token, "authorization"),
              StatusIs(absl::StatusCode::kResourceExhausted));
  // The next UTC day starts afresh, restart or not.
  Advance(absl::Hours(24));
  Reopen({});
  vault_->ResumeVelocityCounts(*db_->KeyUses());
  EXPECT_THAT(vault_->Detokenize(kProcessor, token, "authorization"), IsOk());
}

TEST_F(VaultTest, PolicyReplacementTakesEffectAtOnce) {
  const std::string token =
      vault_->Tokenize(kPos, MakeCard("4111111111111111"))->token;
  auth::PolicySpec none;
  none.purposes = {"authorization"};
  policy_->Replace(*auth::AccessPolicy::Create(none));
  EXPECT_THAT(vault_->Detokenize(kProcessor, token, "authorization"),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

}  // namespace
}  // namespace cardvault::vault
