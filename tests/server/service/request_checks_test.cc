#include "server/service/request_checks.h"

#include "cardvault/v1/audit.pb.h"
#include "cardvault/v1/vault.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::service {
namespace {

using ::cardvault::testing::IsOkAndHolds;
using ::cardvault::testing::StatusIs;

// Field 99, varint 1: what a newer client might add.
constexpr char kUnknownField[] = "\x98\x06\x01";

TEST(RequestChecksTest, UnknownFieldsAreFoundAtAnyDepth) {
  v1::TokenizeBatchRequest batch;
  batch.add_requests()->mutable_card()->set_pan("4111111111111111");
  batch.add_requests();
  EXPECT_FALSE(HasUnknownFields(batch));
  // In a nested message of the second item of a repeated field.
  batch.mutable_requests(1)->mutable_ttl()->MergeFromString(kUnknownField);
  EXPECT_TRUE(HasUnknownFields(batch));
  v1::ListEventsRequest list;
  list.mutable_start_time()->MergeFromString(kUnknownField);
  EXPECT_TRUE(HasUnknownFields(list));
  v1::VerifyChainRequest verify;
  verify.MergeFromString(kUnknownField);
  EXPECT_TRUE(HasUnknownFields(verify));
}

TEST(RequestChecksTest, DurationsMustBeValid) {
  google::protobuf::Duration d;
  d.set_seconds(60);
  d.set_nanos(500'000'000);
  EXPECT_THAT(DurationFromProto(d, "ttl"),
              IsOkAndHolds(absl::Milliseconds(60'500)));
  d.set_seconds(0);
  d.set_nanos(2'000'000'000);  // nanos beyond one second
  EXPECT_THAT(DurationFromProto(d, "ttl"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  d.set_seconds(5);
  d.set_nanos(-1);  // mixed signs
  EXPECT_THAT(DurationFromProto(d, "ttl"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  d.set_seconds(315'576'000'001);
  d.set_nanos(0);
  EXPECT_THAT(DurationFromProto(d, "ttl"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(RequestChecksTest, TimestampsMustBeValid) {
  google::protobuf::Timestamp t;
  t.set_seconds(1'700'000'000);
  EXPECT_THAT(TimeFromProto(t, "start_time"),
              IsOkAndHolds(absl::FromUnixSeconds(1'700'000'000)));
  t.set_nanos(1'000'000'000);
  EXPECT_THAT(TimeFromProto(t, "start_time"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  t.set_nanos(-1);
  EXPECT_THAT(TimeFromProto(t, "start_time"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  t.set_nanos(0);
  t.set_seconds(253'402'300'800);  // 10000-01-01
  EXPECT_THAT(TimeFromProto(t, "start_time"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace cardvault::service
