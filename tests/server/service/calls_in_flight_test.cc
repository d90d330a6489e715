#include "server/service/calls_in_flight.h"

#include <optional>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cardvault::service {
namespace {

TEST(CallsInFlightTest, EachIdentityHasItsOwnBoundAndPlacesComeBack) {
  CallsInFlight calls(2);
  std::optional<CallsInFlight::Slot> a = calls.TryAcquire("spiffe://t/a");
  std::optional<CallsInFlight::Slot> b = calls.TryAcquire("spiffe://t/a");
  ASSERT_TRUE(a.has_value());
  ASSERT_TRUE(b.has_value());
  EXPECT_FALSE(calls.TryAcquire("spiffe://t/a").has_value());
  EXPECT_EQ(calls.refused(), 1u);
  // Another identity is not affected.
  EXPECT_TRUE(calls.TryAcquire("spiffe://t/b").has_value());
  a.reset();  // one call finished
  EXPECT_TRUE(calls.TryAcquire("spiffe://t/a").has_value());
}

TEST(CallsInFlightTest, AMovedSlotIsReleasedOnce) {
  CallsInFlight calls(1);
  std::optional<CallsInFlight::Slot> first = calls.TryAcquire("x");
  ASSERT_TRUE(first.has_value());
  CallsInFlight::Slot moved = *std::move(first);
  first.reset();  // the moved-from slot holds nothing
  EXPECT_FALSE(calls.TryAcquire("x").has_value());
  moved = CallsInFlight::Slot();
  std::optional<CallsInFlight::Slot> again = calls.TryAcquire("x");
  EXPECT_TRUE(again.has_value());
  EXPECT_FALSE(calls.TryAcquire("x").has_value());
}

}  // namespace
}  // namespace cardvault::service
