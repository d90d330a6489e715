#include "server/auth/access_policy.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::auth {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;

struct Row {
  const char* identity;
  bool may_tokenize;
  bool may_detokenize;
};

// The whole role matrix in one table; deny by default for the stranger.
constexpr Row kMatrix[] = {
    {"spiffe://t/pos", true, false},
    {"spiffe://t/processor", false, true},
    {"spiffe://t/auditor", false, false},
    {"spiffe://t/admin", false, false},
    {"spiffe://t/both", true, true},
    {"spiffe://t/stranger", false, false},
    {"", false, false},
};

TEST(AccessPolicyTest, GrantsExactlyTheRightsOfEachRole) {
  auto policy = AccessPolicy::Create({
      {"spiffe://t/pos", {Role::kTokenizer}},
      {"spiffe://t/processor", {Role::kDetokenizer}},
      {"spiffe://t/auditor", {Role::kAuditor}},
      {"spiffe://t/admin", {Role::kAdmin}},
      {"spiffe://t/both", {Role::kTokenizer, Role::kDetokenizer}},
  });
  ASSERT_THAT(policy, IsOk());
  for (const Row& row : kMatrix) {
    SCOPED_TRACE(row.identity);
    auto expect = [](bool allowed) {
      return allowed ? absl::StatusCode::kOk
                     : absl::StatusCode::kPermissionDenied;
    };
    EXPECT_THAT((*policy)->Check(row.identity, Permission::kTokenize),
                StatusIs(expect(row.may_tokenize)));
    EXPECT_THAT((*policy)->Check(row.identity, Permission::kDetokenize),
                StatusIs(expect(row.may_detokenize)));
  }
}

TEST(AccessPolicyTest, EmptyPolicyDeniesEverything) {
  auto policy = AccessPolicy::Create({});
  ASSERT_THAT(policy, IsOk());
  EXPECT_THAT((*policy)->Check("spiffe://t/pos", Permission::kTokenize),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST(AccessPolicyTest, RejectsDuplicateEmptyAndRolelessBindings) {
  EXPECT_THAT(AccessPolicy::Create(
                  {{"a", {Role::kTokenizer}}, {"a", {Role::kDetokenizer}}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(AccessPolicy::Create({{"", {Role::kTokenizer}}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(AccessPolicy::Create({{"a", {}}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace cardvault::auth
