#include "server/vault/token.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/vault/card.h"

namespace cardvault::vault {
namespace {

TEST(TokenTest, GeneratedTokensAreWellFormedAndDistinct) {
  std::set<std::string> seen;
  for (int i = 0; i < 10000; ++i) {
    absl::StatusOr<std::string> token = GenerateToken();
    ASSERT_TRUE(token.ok());
    EXPECT_EQ(token->size(), kTokenLength);
    EXPECT_TRUE(IsWellFormedToken(*token)) << *token;
    EXPECT_TRUE(seen.insert(*token).second);
  }
}

TEST(TokenTest, EveryRandomBitVaries) {
  // With 128 random bits, each of the 26 positions must take many values;
  // a constant or derived position would show up here.
  std::vector<std::set<char>> per_position(26);
  for (int i = 0; i < 2000; ++i) {
    std::string body = GenerateToken()->substr(kTokenPrefix.size());
    for (size_t p = 0; p < body.size(); ++p) per_position[p].insert(body[p]);
  }
  for (size_t p = 0; p < 25; ++p) EXPECT_EQ(per_position[p].size(), 32u) << p;
  EXPECT_EQ(per_position[25].size(), 8u);  // 3 bits left in the last char
}

TEST(TokenTest, CannotPassForAPan) {
  std::string token = *GenerateToken();
  EXPECT_EQ(token.find_first_not_of("0123456789"), 0u);
}

TEST(TokenTest, RejectsMalformedTokens) {
  std::string good = *GenerateToken();
  EXPECT_FALSE(IsWellFormedToken(""));
  EXPECT_FALSE(IsWellFormedToken(good.substr(0, good.size() - 1)));
  EXPECT_FALSE(IsWellFormedToken(good + "a"));
  std::string upper = good;
  upper[5] = 'A';
  EXPECT_FALSE(IsWellFormedToken(upper));
  std::string wrong_prefix = good;
  wrong_prefix[0] = 'x';
  EXPECT_FALSE(IsWellFormedToken(wrong_prefix));
  std::string noncanonical = good;
  noncanonical.back() = 'b';  // low bits set
  EXPECT_FALSE(IsWellFormedToken(noncanonical));
}

TEST(TokenTest, NumericTokensKeepTheirDigitsAndFailLuhn) {
  const std::string pan = "4111111111111111";
  for (int i = 0; i < 2000; ++i) {
    std::string last4 =
        *GenerateNumericToken(TokenFormat::kLastFour, pan, /*bin_digits=*/6);
    ASSERT_EQ(last4.size(), pan.size());
    ASSERT_EQ(last4.substr(12), "1111");
    ASSERT_FALSE(PassesLuhn(last4));
    ASSERT_TRUE(IsWellFormedToken(last4));
    std::string bin8 =
        *GenerateNumericToken(TokenFormat::kBinLastFour, pan, /*bin_digits=*/8);
    // 8 BIN digits would leave only 4 of 16 hidden: 6 are kept.
    ASSERT_EQ(bin8.substr(0, 6), "411111");
    ASSERT_EQ(bin8.substr(12), "1111");
    ASSERT_FALSE(PassesLuhn(bin8));
  }
}

TEST(TokenTest, EveryFreeDigitVaries) {
  // Each free position must take all ten digits; a fixed or biased position
  // would show up here.
  const std::string pan = "378282246310005";  // 15 digits: BIN 5 even if 8
  std::vector<std::set<char>> seen(pan.size());
  for (int i = 0; i < 2000; ++i) {
    std::string t = *GenerateNumericToken(TokenFormat::kBinLastFour, pan, 8);
    for (size_t p = 0; p < t.size(); ++p) seen[p].insert(t[p]);
  }
  for (size_t p = 0; p < pan.size(); ++p) {
    const bool kept = p < 5 || p >= pan.size() - 4;
    EXPECT_EQ(seen[p].size(), kept ? 1u : 10u) << "position " << p;
  }
}

TEST(TokenTest, EightDigitBinsOnlyForLongPans) {
  // At least 6 digits stay hidden whatever is asked.
  EXPECT_EQ(KeptBinDigits(16, 8), 6u);
  EXPECT_EQ(KeptBinDigits(18, 8), 8u);
  EXPECT_EQ(KeptBinDigits(19, 8), 8u);
  EXPECT_EQ(KeptBinDigits(17, 8), 7u);
  EXPECT_EQ(KeptBinDigits(15, 8), 5u);
  EXPECT_EQ(KeptBinDigits(15, 6), 5u);
  EXPECT_EQ(KeptBinDigits(12, 6), 2u);
  EXPECT_EQ(KeptBinDigits(19, 6), 6u);
}

TEST(TokenTest, NumericWellFormednessRequiresALuhnFailure) {
  EXPECT_FALSE(IsWellFormedToken("4111111111111111"));  // passes Luhn
  EXPECT_TRUE(IsWellFormedToken("4111111111111112"));
  EXPECT_FALSE(IsWellFormedToken("41111111112"));           // 11 digits
  EXPECT_FALSE(IsWellFormedToken("41111111111111111112"));  // 20 digits
  EXPECT_FALSE(IsWellFormedToken("411111111111111a"));
}

}  // namespace
}  // namespace cardvault::vault
