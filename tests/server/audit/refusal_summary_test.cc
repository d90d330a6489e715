#include "server/audit/refusal_summary.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cardvault::audit {
namespace {

using ::cardvault::v1::AuditEvent;
using ::testing::HasSubstr;
using ::testing::SizeIs;

const absl::Time kStart = absl::FromUnixSeconds(1'800'000'000);

AuditEvent Refused(
    absl::string_view identity, absl::StatusCode code,
    absl::string_view rpc = "/cardvault.v1.AuditLog/ListEvents") {
  AuditEvent e;
  e.set_rpc(std::string(rpc));
  e.set_identity(std::string(identity));
  e.set_certificate_sha256(absl::StrCat("sha-of-", identity));
  e.set_status_code(static_cast<int>(code));
  e.mutable_event_time()->set_seconds(absl::ToUnixSeconds(kStart));
  return e;
}

TEST(RefusalSummaryTest, OnlyRefusalsOfSingleCallsAreSummarisable) {
  EXPECT_TRUE(
      IsSummarisableRefusal(Refused("x", absl::StatusCode::kPermissionDenied)));
  EXPECT_TRUE(
      IsSummarisableRefusal(Refused("x", absl::StatusCode::kInvalidArgument)));
  EXPECT_FALSE(IsSummarisableRefusal(Refused("x", absl::StatusCode::kOk)));
  // A Detokenize of an unknown token touched the store: recorded alone.
  EXPECT_FALSE(
      IsSummarisableRefusal(Refused("x", absl::StatusCode::kNotFound)));
  EXPECT_FALSE(
      IsSummarisableRefusal(Refused("x", absl::StatusCode::kUnavailable)));
  AuditEvent server_event = Refused("x", absl::StatusCode::kInvalidArgument);
  server_event.clear_rpc();  // e.g. a refused policy reload
  EXPECT_FALSE(IsSummarisableRefusal(server_event));
  AuditEvent batch = Refused("x", absl::StatusCode::kInvalidArgument);
  batch.add_items();
  EXPECT_FALSE(IsSummarisableRefusal(batch));
}

TEST(RefusalSummaryTest, PastTheRateRefusalsAreCountedIntoOneSummary) {
  RefusalSummary summary({.per_minute = 5});
  int recorded = 0;
  for (int i = 0; i < 1000; ++i) {
    recorded += summary.Admit(
        Refused("flooder", absl::StatusCode::kPermissionDenied), kStart);
  }
  EXPECT_EQ(recorded, 5);  // the burst
  // Another caller has its own bucket.
  EXPECT_TRUE(summary.Admit(
      Refused("other", absl::StatusCode::kInvalidArgument), kStart));
  std::vector<AuditEvent> out = summary.Take(kStart + absl::Minutes(1));
  ASSERT_THAT(out, SizeIs(1));
  EXPECT_EQ(out[0].event_type(), v1::REFUSALS_SUMMARY);
  EXPECT_EQ(out[0].identity(), "flooder");
  EXPECT_EQ(out[0].certificate_sha256(), "sha-of-flooder");
  EXPECT_EQ(out[0].refused_calls(), 995u);
  EXPECT_THAT(out[0].detail(), HasSubstr("ListEvents PERMISSION_DENIED x995"));
  // Counted once: the next summary starts from zero.
  EXPECT_THAT(summary.Take(kStart + absl::Minutes(2)), SizeIs(0));
}

TEST(RefusalSummaryTest, TheBucketRefillsAtTheRate) {
  RefusalSummary summary({.per_minute = 60});
  absl::Time t = kStart;
  int recorded = 0;
  // Two per second for two minutes: 60 of burst, then one per second.
  for (int i = 0; i < 240; ++i, t += absl::Milliseconds(500)) {
    recorded +=
        summary.Admit(Refused("x", absl::StatusCode::kPermissionDenied), t);
  }
  EXPECT_GE(recorded, 60 + 119);
  EXPECT_LE(recorded, 60 + 121);
}

TEST(RefusalSummaryTest, CallersBeyondTheBoundShareOneSummary) {
  RefusalSummary summary({.per_minute = 1, .max_callers = 3});
  for (int i = 0; i < 10; ++i) {
    const std::string who = absl::StrCat("c", i);
    (void)summary.Admit(Refused(who, absl::StatusCode::kPermissionDenied),
                        kStart);
    (void)summary.Admit(Refused(who, absl::StatusCode::kPermissionDenied),
                        kStart);
  }
  std::vector<AuditEvent> out = summary.Take(kStart);
  uint64_t total = 0;
  bool others = false;
  for (const AuditEvent& e : out) {
    total += e.refused_calls();
    others = others || e.identity() == "<other callers>";
  }
  EXPECT_TRUE(others);
  EXPECT_LE(out.size(), 4u);
  EXPECT_EQ(total, 3u + 14u);  // 3 tracked: 1 counted each; 7 others: 2 each
}

TEST(RefusalSummaryTest, UnwrittenSummariesAreCountedAgain) {
  RefusalSummary summary({.per_minute = 1});
  for (int i = 0; i < 4; ++i) {
    (void)summary.Admit(Refused("x", absl::StatusCode::kPermissionDenied),
                        kStart);
  }
  summary.PutBack(summary.Take(kStart));
  std::vector<AuditEvent> out = summary.Take(kStart);
  ASSERT_THAT(out, SizeIs(1));
  EXPECT_EQ(out[0].refused_calls(), 3u);
}

}  // namespace
}  // namespace cardvault::audit
