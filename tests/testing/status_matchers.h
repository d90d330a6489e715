// Status matchers for GoogleTest (Debian 12's abseil ships none).
#ifndef CARDVAULT_TESTS_TESTING_STATUS_MATCHERS_H_
#define CARDVAULT_TESTS_TESTING_STATUS_MATCHERS_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"

namespace cardvault::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

MATCHER(IsOk, "is OK") {
  const absl::Status& s = GetStatus(arg);
  if (!s.ok()) *result_listener << "status is " << s;
  return s.ok();
}

MATCHER_P(StatusIs, code,
          "has code " +
              absl::StatusCodeToString(static_cast<absl::StatusCode>(code))) {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code;
}

MATCHER_P2(StatusIs, code, message_matcher,
           "has code " +
               absl::StatusCodeToString(static_cast<absl::StatusCode>(code))) {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code &&
         ::testing::ExplainMatchResult(
             message_matcher, std::string(s.message()), result_listener);
}

MATCHER_P(IsOkAndHolds, value_matcher, "is OK and holds a matching value") {
  if (!arg.ok()) {
    *result_listener << "status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(value_matcher, *arg, result_listener);
}

#define CARDVAULT_ASSERT_OK_AND_ASSIGN(lhs, expr)                             \
  CARDVAULT_ASSERT_OK_AND_ASSIGN_IMPL(CARDVAULT_CONCAT(status_or_, __LINE__), \
                                      lhs, expr)
#define CARDVAULT_ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                        \
  ASSERT_TRUE(tmp.ok()) << tmp.status();                    \
  lhs = *std::move(tmp)
#define CARDVAULT_CONCAT(a, b) CARDVAULT_CONCAT_IMPL(a, b)
#define CARDVAULT_CONCAT_IMPL(a, b) a##b

}  // namespace cardvault::testing

#endif  // CARDVAULT_TESTS_TESTING_STATUS_MATCHERS_H_
