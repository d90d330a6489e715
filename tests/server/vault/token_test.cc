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
  EXPECT_FALSE(IsWellFormedToken("4111111111111111"));
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

}  // namespace
}  // namespace cardvault::vault
