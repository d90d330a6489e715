#include "server/auth/access_policy.h"

#include <atomic>
#include <map>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::auth {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::IsOkAndHolds;
using ::cardvault::testing::StatusIs;

Caller Uri(absl::string_view name) {
  Caller c;
  c.identity = std::string(name);
  return c;
}

// As PeerIdentity names a certificate's CN.
Caller Cn(absl::string_view name) {
  Caller c = Uri(absl::StrCat(kCommonNamePrefix, name));
  c.identity_is_common_name = true;
  return c;
}

PolicySpec Spec() {
  PolicySpec spec;
  spec.purposes = {"authorization", "refund"};
  spec.bindings = {
      {"spiffe://t/pos", {Role::kTokenizer}, {"m1/pos", "m1/web"}, {}, {}},
      {"spiffe://t/processor", {Role::kDetokenizer}, {}, {"m1/pos"}, {2, 5}},
      {"spiffe://t/auditor", {Role::kAuditor}, {}, {}, {}},
      {"spiffe://t/admin", {Role::kAdmin}, {}, {}, {}},
      {"spiffe://t/both",
       {Role::kTokenizer, Role::kDetokenizer},
       {"m1/pos"},
       {"m1/pos"},
       {}},
      {"cn:legacy-cn", {Role::kTokenizer}, {"m1/pos"}, {}, {}},
  };
  return spec;
}

struct Row {
  const char* identity;
  bool tokenize;
  bool detokenize;
  bool read_audit;
  bool token_info;
  bool delete_token;
};

// The whole role matrix in one table; deny by default for the stranger.
constexpr Row kMatrix[] = {
    {"spiffe://t/pos", true, false, false, true, true},
    {"spiffe://t/processor", false, true, false, false, false},
    {"spiffe://t/auditor", false, false, true, true, false},
    {"spiffe://t/admin", false, false, false, false, false},
    {"spiffe://t/both", true, true, false, true, true},
    {"spiffe://t/stranger", false, false, false, false, false},
    {"", false, false, false, false, false},
};

TEST(AccessPolicyTest, GrantsExactlyTheRightsOfEachRole) {
  auto policy = AccessPolicy::Create(Spec());
  ASSERT_THAT(policy, IsOk());
  auto expect = [](bool allowed) {
    return allowed ? absl::StatusCode::kOk
                   : absl::StatusCode::kPermissionDenied;
  };
  for (const Row& row : kMatrix) {
    SCOPED_TRACE(row.identity);
    const Caller c = Uri(row.identity);
    EXPECT_THAT((*policy)->Check(c, Permission::kTokenize),
                StatusIs(expect(row.tokenize)));
    EXPECT_THAT((*policy)->Check(c, Permission::kDetokenize),
                StatusIs(expect(row.detokenize)));
    EXPECT_THAT((*policy)->Check(c, Permission::kReadAudit),
                StatusIs(expect(row.read_audit)));
    EXPECT_THAT((*policy)->Check(c, Permission::kReadTokenInfo),
                StatusIs(expect(row.token_info)));
    EXPECT_THAT((*policy)->Check(c, Permission::kDeleteToken),
                StatusIs(expect(row.delete_token)));
  }
}

TEST(AccessPolicyTest, TokenMetadataAndDeletionFollowTokenizeDomains) {
  auto policy = *AccessPolicy::Create(Spec());
  const Caller pos = Uri("spiffe://t/pos");
  const Caller auditor = Uri("spiffe://t/auditor");
  const Caller processor = Uri("spiffe://t/processor");
  EXPECT_TRUE(policy->MayReadTokenInfo(pos, "m1/web"));
  EXPECT_FALSE(policy->MayReadTokenInfo(pos, "m2/pos"));
  EXPECT_TRUE(policy->MayReadTokenInfo(auditor, "m2/pos"));  // every domain
  EXPECT_FALSE(policy->MayReadTokenInfo(processor, "m1/pos"));
  EXPECT_TRUE(policy->MayDeleteToken(pos, "m1/pos"));
  EXPECT_FALSE(policy->MayDeleteToken(pos, "m2/pos"));
  EXPECT_FALSE(policy->MayDeleteToken(auditor, "m1/pos"));
  EXPECT_FALSE(policy->MayDeleteToken(processor, "m1/pos"));
}

TEST(AccessPolicyTest, CommonNameIdentitiesOnlyWhenAllowed) {
  auto strict = *AccessPolicy::Create(Spec());
  EXPECT_THAT(strict->Check(Cn("legacy-cn"), Permission::kTokenize),
              StatusIs(absl::StatusCode::kPermissionDenied));
  // A CN equal to a URI identity never borrows its rights.
  EXPECT_THAT(strict->Check(Cn("spiffe://t/pos"), Permission::kTokenize),
              StatusIs(absl::StatusCode::kPermissionDenied));
  PolicySpec lenient_spec = Spec();
  lenient_spec.allow_common_name_identities = true;
  auto lenient = *AccessPolicy::Create(lenient_spec);
  EXPECT_THAT(lenient->Check(Cn("legacy-cn"), Permission::kTokenize), IsOk());
  // Nor does a URI identity spelled like a CN binding borrow the CN's.
  EXPECT_THAT(lenient->Check(Uri("cn:legacy-cn"), Permission::kTokenize),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(lenient->Check(Cn("spiffe://t/pos"), Permission::kTokenize),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST(AccessPolicyTest, RecordsOnlyWhatThePolicyKnows) {
  auto policy = *AccessPolicy::Create(Spec());
  EXPECT_TRUE(policy->Names(Uri("spiffe://t/pos")));
  EXPECT_FALSE(policy->Names(Uri("spiffe://t/stranger")));
  EXPECT_TRUE(policy->KnowsDomain("m1/web"));  // a tokenize domain
  EXPECT_FALSE(policy->KnowsDomain("5105105105105100"));
  EXPECT_TRUE(policy->KnowsPurpose("refund"));
  EXPECT_FALSE(policy->KnowsPurpose("4111111111111111"));
}

TEST(AccessPolicyTest, IdentitiesArePrintableAndBounded) {
  EXPECT_TRUE(IsValidIdentity("spiffe://t/pos"));
  EXPECT_TRUE(IsValidIdentity("cn:Lane 7"));  // CNs may hold inner spaces
  EXPECT_FALSE(IsValidIdentity("spiffe://t/a b"));
  EXPECT_FALSE(IsValidIdentity("spiffe://t/pos\nW forged"));
  EXPECT_FALSE(IsValidIdentity(std::string("spiffe://t/\x01", 12)));
  EXPECT_FALSE(IsValidIdentity(std::string(256, 'a')));
  PolicySpec spec = Spec();
  spec.bindings.push_back({"spiffe://t/x\ny", {Role::kAuditor}, {}, {}, {}});
  EXPECT_THAT(AccessPolicy::Create(spec),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(AccessPolicyTest, CvvPurposesMustBeListedPurposes) {
  PolicySpec spec = Spec();
  spec.cvv_purposes = {"authorization"};
  auto policy = *AccessPolicy::Create(spec);
  EXPECT_TRUE(policy->ReleasesCvvFor("authorization"));
  EXPECT_FALSE(policy->ReleasesCvvFor("refund"));
  spec.cvv_purposes = {"settlement"};
  EXPECT_THAT(AccessPolicy::Create(spec),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(AccessPolicyTest, TokenizeDomainIsRequestedOrDefaultAndMustBeGranted) {
  auto policy = *AccessPolicy::Create(Spec());
  EXPECT_THAT(policy->TokenizeDomain(Uri("spiffe://t/pos"), ""),
              IsOkAndHolds(std::string("m1/pos")));
  EXPECT_THAT(policy->TokenizeDomain(Uri("spiffe://t/pos"), "m1/web"),
              IsOkAndHolds(std::string("m1/web")));
  EXPECT_THAT(policy->TokenizeDomain(Uri("spiffe://t/pos"), "m2/pos"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(policy->TokenizeDomain(Uri("spiffe://t/processor"), ""),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST(AccessPolicyTest, DetokenizeOnlyInGrantedDomainsForListedPurposes) {
  auto policy = *AccessPolicy::Create(Spec());
  EXPECT_TRUE(policy->MayDetokenize(Uri("spiffe://t/processor"), "m1/pos"));
  EXPECT_FALSE(policy->MayDetokenize(Uri("spiffe://t/processor"), "m1/web"));
  EXPECT_FALSE(policy->MayDetokenize(Uri("spiffe://t/pos"), "m1/pos"));
  EXPECT_THAT(policy->CheckPurpose("refund"), IsOk());
  EXPECT_THAT(policy->CheckPurpose("curiosity"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(policy->CheckPurpose(""),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(policy->DetokenizeLimit(Uri("spiffe://t/processor")).per_second,
            2u);
}

TEST(AccessPolicyTest, RejectsInconsistentPolicies) {
  auto with = [](auto edit) {
    PolicySpec spec = Spec();
    edit(spec);
    return AccessPolicy::Create(spec);
  };
  EXPECT_THAT(with([](PolicySpec& s) { s.bindings.push_back(s.bindings[0]); }),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(with([](PolicySpec& s) { s.bindings[0].identity = ""; }),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(with([](PolicySpec& s) { s.bindings[0].roles.clear(); }),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      with([](PolicySpec& s) { s.bindings[0].tokenize_domains.clear(); }),
      StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      with([](PolicySpec& s) { s.bindings[1].detokenize_domains.clear(); }),
      StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      with([](PolicySpec& s) { s.bindings[0].tokenize_domains = {"M1"}; }),
      StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(with([](PolicySpec& s) { s.purposes.clear(); }),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(DomainTest, AcceptsOnlyLowercaseSlashSeparatedSegments) {
  EXPECT_TRUE(IsValidDomain("merchant-42/ecommerce"));
  EXPECT_TRUE(IsValidDomain("a.b_c/d-e/f"));
  EXPECT_FALSE(IsValidDomain(""));
  EXPECT_FALSE(IsValidDomain("/a"));
  EXPECT_FALSE(IsValidDomain("a//b"));
  EXPECT_FALSE(IsValidDomain("Merchant"));
  EXPECT_FALSE(IsValidDomain("a b"));
  EXPECT_FALSE(IsValidDomain(std::string(65, 'a')));
}

TEST(RateLimiterTest, TripsAtTheConfiguredRateAndResets) {
  RateLimiter limiter;
  const RateLimit limit{3, 5};
  const absl::Time t0 = absl::FromUnixSeconds(1764000000);  // a day boundary+
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(limiter.Admit("p", limit, t0), IsOk()) << i;
  }
  EXPECT_THAT(limiter.Admit("p", limit, t0 + absl::Milliseconds(100)),
              StatusIs(absl::StatusCode::kResourceExhausted));
  // Another identity has its own budget.
  EXPECT_THAT(limiter.Admit("q", limit, t0), IsOk());
  // The bucket refills at 3 per second...
  EXPECT_THAT(limiter.Admit("p", limit, t0 + absl::Milliseconds(400)), IsOk());
  EXPECT_THAT(limiter.Admit("p", limit, t0 + absl::Seconds(2)), IsOk());
  // ...but the day does not (5 used).
  EXPECT_THAT(limiter.Admit("p", limit, t0 + absl::Seconds(3)),
              StatusIs(absl::StatusCode::kResourceExhausted));
  // A new UTC day resets it.
  EXPECT_THAT(limiter.Admit("p", limit, t0 + absl::Hours(24)), IsOk());
  // No limit configured: never refused.
  for (int i = 0; i < 100; ++i) {
    ASSERT_THAT(limiter.Admit("r", RateLimit{}, t0), IsOk());
  }
}

TEST(RateLimiterTest, NoWindowEdgeLetsTwiceTheRateThrough) {
  // Fixed one-second windows would take 10 just before the edge and 10
  // just after: 20 in 20 ms.
  RateLimiter limiter;
  const RateLimit limit{10, 0};
  const absl::Time edge = absl::FromUnixSeconds(1764000001);
  int admitted = 0;
  for (int i = 0; i < 10; ++i) {
    admitted += limiter.Admit("p", limit, edge - absl::Milliseconds(10)).ok();
  }
  for (int i = 0; i < 10; ++i) {
    admitted += limiter.Admit("p", limit, edge + absl::Milliseconds(10)).ok();
  }
  EXPECT_EQ(admitted, 10);
}

TEST(RateLimiterTest, SeededDayCountsCountAgainstTheDay) {
  RateLimiter limiter;
  const absl::Time now = absl::FromUnixSeconds(1764000000);
  const int64_t day = 1764000000 / 86400;
  limiter.SeedFromCounters({{DayCounterId(day, "p"), 4},
                            {DayCounterId(day - 1, "q"), 9},
                            {"dek/00000001/encryptions", 7}},
                           now);
  const RateLimit limit{0, 5};
  EXPECT_THAT(limiter.Admit("p", limit, now), IsOk());
  EXPECT_THAT(limiter.Admit("p", limit, now),
              StatusIs(absl::StatusCode::kResourceExhausted));
  // Yesterday's count does not count today.
  EXPECT_THAT(limiter.Admit("q", limit, now), IsOk());
}

TEST(RateLimiterTest, DayBlocksAreAThirtySecondOfTheLimitBetween1And256) {
  EXPECT_EQ(DayBlock(1), 1u);
  EXPECT_EQ(DayBlock(63), 1u);
  EXPECT_EQ(DayBlock(64), 2u);
  EXPECT_EQ(DayBlock(1000), 31u);
  EXPECT_EQ(DayBlock(8192), 256u);
  EXPECT_EQ(DayBlock(4000000000u), 256u);
}

// A shared store's reservations of (identity, day) uses, in memory: `nodes`
// limiters over it are nodes over one store.
struct FakeReservations {
  absl::Mutex mu;
  std::map<std::pair<std::string, int64_t>, uint64_t> reserved;
  int calls = 0;
  absl::Status fail = absl::OkStatus();
  RateLimiter::DayReserver Reserver() {
    return [this](absl::string_view identity, int64_t day, uint64_t wanted,
                  uint64_t limit) -> absl::StatusOr<uint64_t> {
      absl::MutexLock lock(&mu);
      ++calls;
      if (!fail.ok()) return fail;
      uint64_t& total = reserved[{std::string(identity), day}];
      if (total >= limit) return absl::ResourceExhaustedError("all reserved");
      const uint64_t granted = std::min(wanted, limit - total);
      total += granted;
      return granted;
    };
  }
};

TEST(RateLimiterTest, SharedDailyLimitHoldsForAllNodesTogether) {
  FakeReservations store;
  RateLimiter a(store.Reserver()), b(store.Reserver());
  const absl::Time now = absl::FromUnixSeconds(1764000000);
  const RateLimit limit{0, 100};  // blocks of 3
  int admitted = 0;
  // Alternating: each node uses its block up before reserving again.
  for (int i = 0; i < 300; ++i) {
    admitted += (i % 2 == 0 ? a : b).Admit("p", limit, now).ok();
  }
  EXPECT_EQ(admitted, 100);
  EXPECT_EQ(store.calls, 34 + 2);  // 33 blocks of 3 and one of 1, + 2 refused
  EXPECT_THAT(a.Admit("p", limit, now),
              StatusIs(absl::StatusCode::kResourceExhausted));
  // Another identity, and the next day, have their own reservations.
  EXPECT_THAT(b.Admit("q", limit, now), IsOk());
  EXPECT_THAT(a.Admit("p", limit, now + absl::Hours(24)), IsOk());
}

TEST(RateLimiterTest, OneNodeAloneMayUseTheLimitLessTheOthersBlocks) {
  FakeReservations store;
  RateLimiter a(store.Reserver()), b(store.Reserver());
  const absl::Time now = absl::FromUnixSeconds(1764000000);
  const RateLimit limit{0, 1000};                 // blocks of 31
  ASSERT_THAT(b.Admit("p", limit, now), IsOk());  // b holds 30 unused
  int admitted = 1;
  while (a.Admit("p", limit, now).ok()) ++admitted;
  EXPECT_EQ(admitted, 1000 - 30);
  EXPECT_GE(admitted, 1000 - static_cast<int>(DayBlock(1000)));
  // b's block is still b's to use: together exactly the limit.
  while (b.Admit("p", limit, now).ok()) ++admitted;
  EXPECT_EQ(admitted, 1000);
}

TEST(RateLimiterTest, AStoreFailureWhileReservingRefusesUnavailable) {
  FakeReservations store;
  RateLimiter a(store.Reserver());
  const absl::Time now = absl::FromUnixSeconds(1764000000);
  const RateLimit limit{0, 10};  // blocks of 1
  store.fail = absl::UnavailableError("database down");
  EXPECT_THAT(a.Admit("p", limit, now),
              StatusIs(absl::StatusCode::kUnavailable));
  store.fail = absl::DataLossError("malformed row");
  EXPECT_THAT(a.Admit("p", limit, now),
              StatusIs(absl::StatusCode::kUnavailable));
  // Nothing was counted: all 10 remain once the store answers.
  store.fail = absl::OkStatus();
  int admitted = 0;
  while (a.Admit("p", limit, now).ok()) ++admitted;
  EXPECT_EQ(admitted, 10);
  // Without a daily limit nothing is reserved.
  const int calls = store.calls;
  EXPECT_THAT(a.Admit("p", RateLimit{5, 0}, now), IsOk());
  EXPECT_EQ(store.calls, calls);
}

TEST(RateLimiterTest, ConcurrentCallsOfOneIdentityReserveOneBlockAtATime) {
  FakeReservations store;
  RateLimiter a(store.Reserver());
  const absl::Time now = absl::FromUnixSeconds(1764000000);
  const RateLimit limit{0, 6400};  // blocks of 200
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 100; ++i) admitted += a.Admit("p", limit, now).ok();
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(admitted.load(), 800);
  // 800 calls: 4 blocks, not one per thread that found none left.
  EXPECT_EQ(store.calls, 4);
}

TEST(RateLimiterTest, ThePerSecondBucketStaysPerNode) {
  FakeReservations store;
  RateLimiter a(store.Reserver()), b(store.Reserver());
  const absl::Time now = absl::FromUnixSeconds(1764000000);
  const RateLimit limit{2, 100};
  int admitted = 0;
  for (int i = 0; i < 10; ++i) {
    admitted += (i % 2 == 0 ? a : b).Admit("p", limit, now).ok();
  }
  EXPECT_EQ(admitted, 4);  // 2 a second on each of 2 nodes
}

}  // namespace
}  // namespace cardvault::auth
