// Token formats, deterministic tokens, fingerprints, metadata, batches,
// TTL and deletion, idempotency and CVVs, on a real RocksDB and audit chain.
#include <atomic>
#include <filesystem>
#include <latch>
#include <set>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/vault/vault.h"
#include "tests/server/vault/vault_fixture.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_cards.h"
#include "tests/testing/test_env.h"

namespace cardvault::vault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

class TokenLifecycleTest : public VaultTest {
 protected:
  static TokenizeRequest Request(absl::string_view pan,
                                 TokenFormat format = TokenFormat::kRandom) {
    TokenizeRequest r;
    r.card = MakeCard(pan);
    r.format = format;
    return r;
  }
  // All bytes of every file under the data directory.
  std::string DataFiles() const {
    std::string all;
    for (const auto& [path, bytes] : testing::ReadTree(dir_)) {
      absl::StrAppend(&all, bytes);
    }
    return all;
  }
  // The same without RocksDB's own diagnostics (LOG*, OPTIONS*): they never
  // hold values, but are full of numbers a 3-4 digit search would hit.
  std::string DataFilesWithoutDiagnostics() const {
    std::string all;
    for (const auto& [path, bytes] : testing::ReadTree(dir_)) {
      const std::string name = std::filesystem::path(path).filename();
      if (absl::StartsWith(name, "LOG") || absl::StartsWith(name, "OPTIONS")) {
        continue;
      }
      absl::StrAppend(&all, bytes);
    }
    return all;
  }
};

// Invariant: numeric tokens look like the PAN where the format says so, and
// nowhere else can they pass for a card.
TEST_F(TokenLifecycleTest, NumericFormatPropertiesOver100000TokensEach) {
  constexpr int kTokens = 100000;
  constexpr int kBatch = 1000;
  const std::vector<std::string> pans = testing::MakePans(kTokens, 42);
  spec_.domains = {{.name = "m1/pos", .bin_digits = 8}};
  ApplyPolicy();
  for (TokenFormat format : {TokenFormat::kRandom, TokenFormat::kLastFour,
                             TokenFormat::kBinLastFour}) {
    SCOPED_TRACE(static_cast<int>(format));
    absl::flat_hash_set<std::string> seen;
    for (int start = 0; start < kTokens; start += kBatch) {
      std::vector<TokenizeRequest> batch;
      for (int i = start; i < start + kBatch; ++i) {
        batch.push_back(Request(pans[i], format));
      }
      auto results = vault_->TokenizeBatch(kPos, std::move(batch));
      ASSERT_THAT(results, IsOk());
      for (int i = 0; i < kBatch; ++i) {
        const absl::StatusOr<Tokenized>& r = (*results)[i];
        ASSERT_THAT(r, IsOk());
        const std::string& pan = pans[start + i];
        const std::string& token = r->token;
        ASSERT_TRUE(seen.insert(token).second) << "duplicate token";
        ASSERT_NE(token, pan);
        ASSERT_TRUE(IsWellFormedToken(token)) << token;
        if (format == TokenFormat::kRandom) {
          ASSERT_THAT(token, StartsWith("tok_"));
          ASSERT_EQ(token.size(), kTokenLength);
          continue;
        }
        ASSERT_EQ(token.size(), pan.size());
        ASSERT_FALSE(PassesLuhn(token)) << "numeric token passes Luhn";
        ASSERT_EQ(token.substr(token.size() - 4), pan.substr(pan.size() - 4));
        if (format == TokenFormat::kBinLastFour) {
          const size_t bin = KeptBinDigits(pan.size(), 8);
          ASSERT_EQ(token.substr(0, bin), pan.substr(0, bin));
        }
        // At least 6 digits of the PAN are never in its token.
        const size_t kept = format == TokenFormat::kBinLastFour
                                ? KeptBinDigits(pan.size(), 8) + 4
                                : 4;
        ASSERT_GE(pan.size() - kept, kMinHiddenPanDigits);
      }
    }
    EXPECT_EQ(seen.size(), static_cast<size_t>(kTokens));
  }
}

TEST_F(TokenLifecycleTest, CrowdedNumericSpaceGivesUpAfterTheRetryBound) {
  // A space of three tokens (every real space has 900,000 or more): the
  // fourth card of this BIN and last four finds none free.
  constexpr int kDraws = 16;
  std::atomic<int> draws{0};
  Vault::Options options;
  options.max_numeric_token_attempts = kDraws;
  options.generate_numeric_token =
      [&](TokenFormat f, absl::string_view pan,
          size_t bin) -> absl::StatusOr<std::string> {
    absl::StatusOr<std::string> t = GenerateNumericToken(f, pan, bin);
    if (!t.ok()) return t;
    static constexpr const char* kSpace[] = {
        "4111110000001110", "4111110000002110", "4111110000003110"};
    return std::string(kSpace[draws++ % 3]);
  };
  Reopen(options);
  const std::string pan = "4111111111111111";
  std::set<std::string> tokens;
  for (int i = 0; i < 3; ++i) {
    auto t = vault_->Tokenize(kPos, Request(pan, TokenFormat::kBinLastFour));
    ASSERT_THAT(t, IsOk());
    EXPECT_TRUE(tokens.insert(t->token).second);
  }
  draws = 0;
  auto t = vault_->Tokenize(kPos, Request(pan, TokenFormat::kBinLastFour));
  EXPECT_THAT(t, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(t.status().message(), Not(HasSubstr(pan)));
  EXPECT_EQ(draws.load(), kDraws);  // the bound, and no more
}

TEST_F(TokenLifecycleTest, ShortPansKeepFewerBinDigitsSoSixStayHidden) {
  spec_.domains = {{.name = "m1/pos", .bin_digits = 8}};
  ApplyPolicy();
  // A 12-digit Maestro: 2 BIN digits and the last four, 6 drawn.
  const std::string pan12 = "501800000009";
  ASSERT_TRUE(PassesLuhn(pan12));
  for (int i = 0; i < 50; ++i) {
    auto t = vault_->Tokenize(kPos, Request(pan12, TokenFormat::kBinLastFour));
    ASSERT_THAT(t, IsOk());
    ASSERT_EQ(t->token.size(), 12u);
    EXPECT_EQ(t->token.substr(0, 2), "50");
    EXPECT_EQ(t->token.substr(8), "0009");
  }
  auto info = vault_->GetTokenInfo(
      kPos,
      vault_->Tokenize(kPos, Request(pan12, TokenFormat::kLastFour))->token);
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->bin, "50");  // metadata shows no more than the token keeps
}

TEST_F(TokenLifecycleTest,
       ConcurrentDeterministicTokenizeOfOnePanGivesOneToken) {
  constexpr int kThreads = 16;
  std::vector<std::string> tokens(kThreads);
  std::vector<int> created(kThreads);
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      TokenizeRequest r = Request("4111111111111111");
      r.deterministic = true;
      start.arrive_and_wait();  // all at once
      auto t = vault_->Tokenize(kPos, std::move(r));
      ASSERT_THAT(t, IsOk());
      tokens[i] = t->token;
      created[i] = t->created;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(std::set<std::string>(tokens.begin(), tokens.end()).size(), 1u);
  EXPECT_EQ(std::count(created.begin(), created.end(), 1), 1);
  // Another domain: another token, and an unrelated fingerprint.
  TokenizeRequest other = Request("4111111111111111");
  other.deterministic = true;
  other.domain = "m2/pos";
  auto in_m2 = vault_->Tokenize(kPos, std::move(other));
  ASSERT_THAT(in_m2, IsOk());
  EXPECT_NE(in_m2->token, tokens[0]);
  auto info1 = vault_->GetTokenInfo(kPos, tokens[0]);
  auto info2 = vault_->GetTokenInfo(kPos, in_m2->token);
  ASSERT_THAT(info1, IsOk());
  ASSERT_THAT(info2, IsOk());
  EXPECT_NE(info1->fingerprint, info2->fingerprint);
  // Same PAN, same domain, not deterministic: a new token, same fingerprint.
  auto random = vault_->Tokenize(kPos, Request("4111111111111111"));
  ASSERT_THAT(random, IsOk());
  EXPECT_NE(random->token, tokens[0]);
  EXPECT_EQ(vault_->GetTokenInfo(kPos, random->token)->fingerprint,
            info1->fingerprint);
}

TEST_F(TokenLifecycleTest, DomainCanForceDeterministicTokens) {
  spec_.domains = {{.name = "m1/pos", .deterministic = true}};
  ApplyPolicy();
  auto a = vault_->Tokenize(kPos, MakeCard("5555555555554444"));
  auto b = vault_->Tokenize(kPos, MakeCard("5555555555554444"));
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(a->token, b->token);
  EXPECT_TRUE(a->created);
  EXPECT_FALSE(b->created);
  EXPECT_TRUE(vault_->GetTokenInfo(kPos, a->token)->deterministic);
  // The index holds a keyed HMAC, never the PAN or a plain hash of it.
  EXPECT_THAT(DataFiles(), Not(HasSubstr("5555555555554444")));
}

TEST_F(TokenLifecycleTest, TokenInfoCarriesMetadataButNeverThePan) {
  spec_.domains = {{.name = "m2/pos", .bin_digits = 8}};
  ApplyPolicy();
  TokenizeRequest r = Request("5555555555554444", TokenFormat::kLastFour);
  r.ttl = absl::Hours(1);
  auto t = vault_->Tokenize(kPos, std::move(r));
  ASSERT_THAT(t, IsOk());
  auto info = vault_->GetTokenInfo(kAuditor, t->token);
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->brand, CardBrand::kMastercard);
  EXPECT_EQ(info->bin, "555555");
  EXPECT_EQ(info->last_four, "4444");
  EXPECT_EQ(info->exp_month, 12u);
  EXPECT_EQ(info->exp_year, 2039u);
  EXPECT_EQ(info->format, TokenFormat::kLastFour);
  EXPECT_EQ(info->domain, "m1/pos");
  EXPECT_EQ(info->expires - info->created, absl::Hours(1));
  EXPECT_THAT(info->fingerprint, StartsWith("fp_"));
  EXPECT_EQ(info->fingerprint.size(), 3u + 32u);
  // 8-digit BINs where the domain asks for them, on PANs long enough to
  // keep 6 digits hidden (19 here; a 16-digit PAN keeps 6).
  std::mt19937_64 rng(19);
  const std::string pan19 = testing::MakePan("3528", 19, rng);
  TokenizeRequest r2 = Request(pan19, TokenFormat::kBinLastFour);
  r2.domain = "m2/pos";
  auto t2 = vault_->Tokenize(kPos, std::move(r2));
  ASSERT_THAT(t2, IsOk());
  EXPECT_EQ(vault_->GetTokenInfo(kPos, t2->token)->bin, pan19.substr(0, 8));
  EXPECT_EQ(t2->token.substr(0, 8), pan19.substr(0, 8));
  // Detokenizers do not get metadata; neither does a stranger.
  EXPECT_THAT(vault_->GetTokenInfo(kProcessor, t->token),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(vault_->GetTokenInfo(kStranger, t->token),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST_F(TokenLifecycleTest, BatchKeepsPerItemResultsInOrderInOneWrite) {
  std::vector<TokenizeRequest> batch;
  batch.push_back(Request("4111111111111111"));
  batch.push_back(Request("4111111111111112"));  // fails Luhn
  batch.push_back(Request("378282246310005", TokenFormat::kLastFour));
  TokenizeRequest foreign = Request("5555555555554444");
  foreign.domain = "m3/pos";  // not the caller's
  batch.push_back(std::move(foreign));
  TokenizeRequest bad_cvv = Request("6011111111111117");
  bad_cvv.cvv = crypto::SecretBytes(absl::string_view("12"));
  batch.push_back(std::move(bad_cvv));
  batch.push_back(Request("3530111333300000", TokenFormat::kBinLastFour));
  const int commits = store_->commits();
  auto results = vault_->TokenizeBatch(kPos, std::move(batch));
  ASSERT_THAT(results, IsOk());
  EXPECT_EQ(store_->commits() - commits, 1);
  ASSERT_EQ(results->size(), 6u);
  EXPECT_THAT((*results)[0], IsOk());
  EXPECT_THAT((*results)[1], StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT((*results)[2], IsOk());
  EXPECT_THAT((*results)[3], StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT((*results)[4], StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT((*results)[5], IsOk());
  EXPECT_EQ((*results)[2]->token.size(), 15u);
  // The batch is one audit event listing every item, refusals included,
  // with the outcome each caller would have seen.
  std::vector<v1::AuditEvent> batch_events;
  for (const auto& e : Events()) {
    if (e.event_type() == v1::TOKENIZE && e.rpc() == kTokenizeBatchRpc) {
      batch_events.push_back(e);
    }
  }
  ASSERT_EQ(batch_events.size(), 1u);
  const v1::AuditEvent& event = batch_events[0];
  EXPECT_EQ(event.identity(), kPos.identity);
  ASSERT_EQ(event.items_size(), 6);
  for (int i = 0; i < 6; ++i) {
    const v1::BatchItem& item = event.items(i);
    EXPECT_EQ(item.index(), static_cast<uint32_t>(i));
    EXPECT_EQ(item.status_code(),
              static_cast<int32_t>((*results)[i].status().code()));
    EXPECT_EQ(item.token(), (*results)[i].ok() ? (*results)[i]->token : "");
  }
  // Detokenize them back in one batch, with a malformed and an unknown token.
  std::vector<DetokenizeRequest> back = {
      {(*results)[5]->token, "authorization"},
      {"not-a-token", "authorization"},
      {(*results)[0]->token, "authorization"},
      {"tok_aaaaaaaaaaaaaaaaaaaaaaaaaa", "authorization"}};
  auto cards = vault_->DetokenizeBatch(kProcessor, back);
  ASSERT_THAT(cards, IsOk());
  ASSERT_EQ(cards->size(), 4u);
  EXPECT_EQ((*cards)[0]->card.pan.view(), "3530111333300000");
  EXPECT_THAT((*cards)[1], StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ((*cards)[2]->card.pan.view(), "4111111111111111");
  EXPECT_THAT((*cards)[3], StatusIs(absl::StatusCode::kNotFound));
  // One event for the detokenize batch too; an auditor finds each token's
  // item by filtering on the token.
  std::vector<v1::AuditEvent> found;
  AuditFilter filter;
  filter.token = (*results)[0]->token;
  ASSERT_THAT(vault_->ListAuditEvents(kAuditor, filter,
                                      [&](const v1::AuditEvent& e) {
                                        found.push_back(e);
                                        return true;
                                      }),
              IsOk());
  // Its tokenize batch, its detokenize batch, and this listing itself.
  ASSERT_EQ(found.size(), 3u);
  EXPECT_EQ(found[0].rpc(), kTokenizeBatchRpc);
  EXPECT_EQ(found[2].event_type(), v1::LIST_EVENTS);
  EXPECT_EQ(found[1].rpc(), kDetokenizeBatchRpc);
  ASSERT_EQ(found[1].items_size(), 4);
  EXPECT_EQ(found[1].items(2).token(), (*results)[0]->token);
  EXPECT_EQ(found[1].items(2).purpose(), "authorization");
  EXPECT_EQ(found[1].items(2).status_code(), 0);
  EXPECT_EQ(found[1].items(3).status_code(),
            static_cast<int32_t>(absl::StatusCode::kNotFound));
}

TEST_F(TokenLifecycleTest, BatchSizeIsBounded) {
  EXPECT_THAT(vault_->TokenizeBatch(kPos, {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  Vault::Options options;
  options.max_batch_items = 3;
  Reopen(options);
  std::vector<TokenizeRequest> four;
  for (int i = 0; i < 4; ++i) four.push_back(Request("4111111111111111"));
  EXPECT_THAT(vault_->TokenizeBatch(kPos, std::move(four)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      vault_->DetokenizeBatch(kProcessor, std::vector<DetokenizeRequest>(4)),
      StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(TokenLifecycleTest, ExpiredAndDeletedTokensAreGoneAfterCompaction) {
  TokenizeRequest short_lived = Request("4111111111111111");
  short_lived.ttl = absl::Minutes(5);
  short_lived.deterministic = true;
  auto expiring = vault_->Tokenize(kPos, std::move(short_lived));
  auto deleted = vault_->Tokenize(kPos, Request("5555555555554444"));
  auto kept = vault_->Tokenize(kPos, Request("378282246310005"));
  ASSERT_THAT(expiring, IsOk());
  ASSERT_THAT(deleted, IsOk());
  ASSERT_THAT(kept, IsOk());
  EXPECT_EQ(expiring->expires, Now() + absl::Minutes(5));
  auto record_of = [&](const std::string& token) {
    return *db_->Get(storage::Table::kTokens, token);
  };
  // The sealed bytes after the clear header: what must not stay on disk.
  const std::string expiring_record = record_of(expiring->token).substr(40);
  const std::string deleted_record = record_of(deleted->token).substr(40);
  const std::string kept_record = record_of(kept->token).substr(40);
  ASSERT_THAT(db_->Flush(), IsOk());

  EXPECT_THAT(vault_->DeleteToken(kPos, deleted->token),
              ::cardvault::testing::IsOkAndHolds(true));
  // Idempotent: a second delete finds nothing and says so.
  EXPECT_THAT(vault_->DeleteToken(kPos, deleted->token),
              ::cardvault::testing::IsOkAndHolds(false));
  EXPECT_THAT(vault_->Detokenize(kProcessor, deleted->token, "refund"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(vault_->GetTokenInfo(kPos, deleted->token),
              StatusIs(absl::StatusCode::kNotFound));

  Advance(absl::Minutes(5));
  EXPECT_THAT(vault_->Detokenize(kProcessor, expiring->token, "refund"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(vault_->GetTokenInfo(kPos, expiring->token),
              StatusIs(absl::StatusCode::kNotFound));
  // A deterministic Tokenize of the expired PAN makes a new token.
  TokenizeRequest again = Request("4111111111111111");
  again.deterministic = true;
  auto renewed = vault_->Tokenize(kPos, std::move(again));
  ASSERT_THAT(renewed, IsOk());
  EXPECT_NE(renewed->token, expiring->token);
  EXPECT_TRUE(renewed->created);

  ASSERT_THAT(db_->CompactTokenData(), IsOk());
  EXPECT_THAT(db_->Get(storage::Table::kTokens, expiring->token),
              StatusIs(absl::StatusCode::kNotFound));
  // Close the database so that nothing is held only in memory, then read
  // the raw files (SST, WAL, MANIFEST, LOG).
  vault_.reset();
  audit_.reset();
  store_.reset();
  db_.reset();
  const std::string files = DataFiles();
  EXPECT_THAT(files, HasSubstr(kept_record));  // the scan can find records
  EXPECT_THAT(files, Not(HasSubstr(expiring_record)));
  EXPECT_THAT(files, Not(HasSubstr(deleted_record)));
}

TEST_F(TokenLifecycleTest, TtlIsBoundedByTheDomainMaximum) {
  spec_.domains = {{.name = "m1/pos", .max_ttl = absl::Hours(24)}};
  ApplyPolicy();
  auto defaulted = vault_->Tokenize(kPos, MakeCard("4111111111111111"));
  ASSERT_THAT(defaulted, IsOk());
  EXPECT_EQ(defaulted->expires, Now() + absl::Hours(24));
  TokenizeRequest too_long = Request("4111111111111111");
  too_long.ttl = absl::Hours(25);
  EXPECT_THAT(vault_->Tokenize(kPos, std::move(too_long)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  TokenizeRequest negative = Request("4111111111111111");
  negative.ttl = -absl::Seconds(1);
  EXPECT_THAT(vault_->Tokenize(kPos, std::move(negative)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  TokenizeRequest sub_second = Request("4111111111111111");
  sub_second.ttl = absl::Milliseconds(999);
  EXPECT_THAT(vault_->Tokenize(kPos, std::move(sub_second)),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(TokenLifecycleTest, TtlWithoutADomainCapIsStillBounded) {
  TokenizeRequest century = Request("4111111111111111");
  century.ttl = absl::Hours(24 * 365 * 100);
  EXPECT_THAT(vault_->Tokenize(kPos, std::move(century)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  TokenizeRequest decade = Request("4111111111111111");
  decade.ttl = absl::Hours(24 * 365 * 10);
  auto t = vault_->Tokenize(kPos, std::move(decade));
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->expires, Now() + absl::Hours(24 * 365 * 10));
}

TEST_F(TokenLifecycleTest, OnlyTheOwningTokenizerDeletes) {
  auto t = vault_->Tokenize(kPos, MakeCard("4111111111111111"), "m1/pos");
  ASSERT_THAT(t, IsOk());
  EXPECT_THAT(vault_->DeleteToken(kProcessor, t->token),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(vault_->DeleteToken(kAuditor, t->token),
              StatusIs(absl::StatusCode::kPermissionDenied));
  // A tokenizer of other domains learns nothing and deletes nothing.
  spec_.bindings.push_back(
      {"spiffe://t/other", {auth::Role::kTokenizer}, {"m9/pos"}, {}, {}});
  ApplyPolicy();
  auth::Caller other = MakeCaller("other");
  EXPECT_THAT(vault_->DeleteToken(other, t->token),
              ::cardvault::testing::IsOkAndHolds(false));
  EXPECT_THAT(vault_->GetTokenInfo(other, t->token),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(vault_->Detokenize(kProcessor, t->token, "refund"), IsOk());
  size_t delete_events = 0;
  for (const auto& e : Events()) {
    delete_events += e.event_type() == v1::DELETE_TOKEN;
  }
  EXPECT_EQ(delete_events, 3u);
}

TEST_F(TokenLifecycleTest, IdempotentRetryReturnsTheFirstResult) {
  auto make = [](absl::string_view pan, absl::string_view key) {
    TokenizeRequest r = Request(pan);
    r.idempotency_key = std::string(key);
    return r;
  };
  auto first = vault_->Tokenize(kPos, make("4111111111111111", "order-1"));
  ASSERT_THAT(first, IsOk());
  EXPECT_TRUE(first->created);
  auto retry = vault_->Tokenize(kPos, make("4111111111111111", "order-1"));
  ASSERT_THAT(retry, IsOk());
  EXPECT_EQ(retry->token, first->token);
  EXPECT_FALSE(retry->created);
  EXPECT_EQ(TokenCount(), 2u);  // two events, one token record
  EXPECT_THAT(vault_->Tokenize(kPos, make("5555555555554444", "order-1")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // Keys are per identity: another tokenizer's "order-1" is its own.
  spec_.bindings.push_back(
      {"spiffe://t/web", {auth::Role::kTokenizer}, {"m1/pos"}, {}, {}});
  ApplyPolicy();
  auto web =
      vault_->Tokenize(MakeCaller("web"), make("4111111111111111", "order-1"));
  ASSERT_THAT(web, IsOk());
  EXPECT_NE(web->token, first->token);
  // After the window the key may be used again.
  Advance(absl::Hours(25));
  auto later = vault_->Tokenize(kPos, make("5555555555554444", "order-1"));
  ASSERT_THAT(later, IsOk());
  EXPECT_TRUE(later->created);
}

TEST_F(TokenLifecycleTest, ConcurrentIdempotentRetriesCreateOneToken) {
  constexpr int kThreads = 8;
  std::vector<std::string> tokens(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      TokenizeRequest r = Request("4111111111111111");
      r.idempotency_key = "checkout-7";
      auto t = vault_->Tokenize(kPos, std::move(r));
      ASSERT_THAT(t, IsOk());
      tokens[i] = t->token;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(std::set<std::string>(tokens.begin(), tokens.end()).size(), 1u);
}

TEST_F(TokenLifecycleTest, CvvIsReturnedOnceAndNeverStored) {
  TokenizeRequest r = Request("4111111111111111");
  r.cvv = crypto::SecretBytes(absl::string_view("7391"));
  auto t = vault_->Tokenize(kPos, std::move(r));
  ASSERT_THAT(t, IsOk());
  auto first = vault_->Detokenize(kProcessor, t->token, "authorization");
  ASSERT_THAT(first, IsOk());
  ASSERT_TRUE(first->cvv.has_value());
  EXPECT_EQ(first->cvv->view(), "7391");
  auto second = vault_->Detokenize(kProcessor, t->token, "authorization");
  ASSERT_THAT(second, IsOk());
  EXPECT_FALSE(second->cvv.has_value());
  // Neither the CVV nor the request that carried it is on disk.
  ASSERT_THAT(db_->Flush(), IsOk());
  EXPECT_THAT(DataFilesWithoutDiagnostics(), Not(HasSubstr("7391")));
}

TEST_F(TokenLifecycleTest, CvvIsDroppedAfterItsTtl) {
  TokenizeRequest r = Request("4111111111111111");
  r.cvv = crypto::SecretBytes(absl::string_view("123"));
  auto t = vault_->Tokenize(kPos, std::move(r));
  ASSERT_THAT(t, IsOk());
  Advance(absl::Minutes(15));
  auto card = vault_->Detokenize(kProcessor, t->token, "authorization");
  ASSERT_THAT(card, IsOk());
  EXPECT_FALSE(card->cvv.has_value());
  EXPECT_EQ(cvv_cache_->size(), 0u);
}

TEST_F(TokenLifecycleTest,
       IdempotentRetryWithAnotherCvvIsRefusedAndKeepsTheHeldOne) {
  auto make = [](absl::string_view cvv) {
    TokenizeRequest r = Request("4111111111111111");
    r.idempotency_key = "order-9";
    if (!cvv.empty()) r.cvv = crypto::SecretBytes(cvv);
    return r;
  };
  auto first = vault_->Tokenize(kPos, make("123"));
  ASSERT_THAT(first, IsOk());
  EXPECT_THAT(vault_->Tokenize(kPos, make("456")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // The same CVV is the same request; it changes nothing.
  auto same = vault_->Tokenize(kPos, make("123"));
  ASSERT_THAT(same, IsOk());
  EXPECT_EQ(same->token, first->token);
  // Without a CVV it is another request than the first.
  EXPECT_THAT(vault_->Tokenize(kPos, make("")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  auto card = vault_->Detokenize(kProcessor, first->token, "authorization");
  ASSERT_THAT(card, IsOk());
  ASSERT_TRUE(card->cvv.has_value());
  EXPECT_EQ(card->cvv->view(), "123");
  // Once taken, a retry with the CVV stores nothing again.
  ASSERT_THAT(vault_->Tokenize(kPos, make("123")), IsOk());
  EXPECT_EQ(cvv_cache_->size(), 0u);
}

TEST_F(TokenLifecycleTest,
       DeterministicRetokenizeWithANewCvvReplacesItAndSaysSo) {
  auto make = [](absl::string_view cvv) {
    TokenizeRequest r = Request("4111111111111111");
    r.deterministic = true;
    r.cvv = crypto::SecretBytes(cvv);
    return r;
  };
  auto first = vault_->Tokenize(kPos, make("111"));
  ASSERT_THAT(first, IsOk());
  auto second = vault_->Tokenize(kPos, make("222"));
  ASSERT_THAT(second, IsOk());
  EXPECT_EQ(second->token, first->token);
  EXPECT_THAT(Events().back().detail(),
              HasSubstr("existing-token cvv-replaced"));
  auto card = vault_->Detokenize(kProcessor, first->token, "authorization");
  ASSERT_THAT(card, IsOk());
  ASSERT_TRUE(card->cvv.has_value());
  EXPECT_EQ(card->cvv->view(), "222");
}

TEST_F(TokenLifecycleTest, CvvIsReleasedOnlyForThePurposesThePolicyMarks) {
  TokenizeRequest r = Request("4111111111111111");
  r.cvv = crypto::SecretBytes(absl::string_view("737"));
  auto t = vault_->Tokenize(kPos, std::move(r));
  ASSERT_THAT(t, IsOk());
  auto refund = vault_->Detokenize(kProcessor, t->token, "refund");
  ASSERT_THAT(refund, IsOk());
  EXPECT_FALSE(refund->cvv.has_value());  // and it stays held
  auto auth = vault_->Detokenize(kProcessor, t->token, "authorization");
  ASSERT_THAT(auth, IsOk());
  ASSERT_TRUE(auth->cvv.has_value());
  EXPECT_EQ(auth->cvv->view(), "737");
}

}  // namespace
}  // namespace cardvault::vault
