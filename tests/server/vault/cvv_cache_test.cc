#include "server/vault/cvv_cache.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::vault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;

const absl::Time kT0 = absl::FromUnixSeconds(1764000000);

crypto::SecretBytes Cvv(absl::string_view digits) {
  return crypto::SecretBytes(digits);
}

TEST(CvvCacheTest, TakeReturnsTheValueOnce) {
  auto cache = *CvvCache::Create({});
  ASSERT_THAT(cache->Put("tok_a", Cvv("123"), kT0), IsOk());
  auto first = cache->Take("tok_a", kT0 + absl::Minutes(1));
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->view(), "123");
  EXPECT_FALSE(cache->Take("tok_a", kT0 + absl::Minutes(1)).has_value());
  EXPECT_EQ(cache->size(), 0u);
}

TEST(CvvCacheTest, ExpiredValuesAreNeverReturnedAndAreDropped) {
  auto cache = *CvvCache::Create({.ttl = absl::Minutes(15)});
  ASSERT_THAT(cache->Put("tok_a", Cvv("123"), kT0), IsOk());
  ASSERT_THAT(cache->Put("tok_b", Cvv("4567"), kT0 + absl::Minutes(10)),
              IsOk());
  EXPECT_FALSE(cache->Take("tok_a", kT0 + absl::Minutes(15)).has_value());
  // A later Put drops what has expired, without anyone asking for it.
  ASSERT_THAT(cache->Put("tok_c", Cvv("999"), kT0 + absl::Minutes(26)), IsOk());
  EXPECT_EQ(cache->size(), 1u);
  EXPECT_EQ(cache->Take("tok_c", kT0 + absl::Minutes(26))->view(), "999");
}

TEST(CvvCacheTest, ReplacingKeepsTheNewerValueAndItsExpiry) {
  auto cache = *CvvCache::Create({.ttl = absl::Minutes(15)});
  ASSERT_THAT(cache->Put("tok_a", Cvv("111"), kT0), IsOk());
  ASSERT_THAT(cache->Put("tok_a", Cvv("222"), kT0 + absl::Minutes(10)), IsOk());
  // Past the first expiry, before the second.
  auto v = cache->Take("tok_a", kT0 + absl::Minutes(20));
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(v->view(), "222");
}

TEST(CvvCacheTest, CapacityIsBoundedAndEraseForgets) {
  auto cache = *CvvCache::Create({.max_entries = 2});
  ASSERT_THAT(cache->Put("tok_a", Cvv("111"), kT0), IsOk());
  ASSERT_THAT(cache->Put("tok_b", Cvv("222"), kT0), IsOk());
  EXPECT_THAT(cache->Put("tok_c", Cvv("333"), kT0),
              StatusIs(absl::StatusCode::kResourceExhausted));
  cache->Erase("tok_a");
  EXPECT_FALSE(cache->Take("tok_a", kT0).has_value());
  EXPECT_THAT(cache->Put("tok_c", Cvv("333"), kT0), IsOk());
}

TEST(CvvCacheTest, BadOptionsAreRefused) {
  EXPECT_THAT(CvvCache::Create({.ttl = absl::ZeroDuration()}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(CvvCache::Create({.max_entries = 0}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace cardvault::vault
