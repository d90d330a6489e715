// Polling for a condition that a server reaches in its own time.
#ifndef CARDVAULT_TESTS_TESTING_EVENTUALLY_H_
#define CARDVAULT_TESTS_TESTING_EVENTUALLY_H_

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace cardvault::testing {

// Polls `f` every 100 ms until it returns true or `limit` passes; the last
// answer.
template <typename F>
bool Eventually(absl::Duration limit, F f) {
  const absl::Time deadline = absl::Now() + limit;
  while (absl::Now() < deadline) {
    if (f()) return true;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return f();
}

}  // namespace cardvault::testing

#endif  // CARDVAULT_TESTS_TESTING_EVENTUALLY_H_
