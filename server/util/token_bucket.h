// A token bucket: up to `capacity` tokens, refilled continuously at
// `per_second`, full when first used. The rate and capacity are passed at
// each use, so a limit changed by a policy reload applies at once. Shared by
// the velocity limits, the refusal summaries and the rate-limited log lines.
//
// Thread safety: not thread-safe; its owner holds a lock.
#ifndef CARDVAULT_SERVER_UTIL_TOKEN_BUCKET_H_
#define CARDVAULT_SERVER_UTIL_TOKEN_BUCKET_H_

#include <algorithm>

#include "absl/time/time.h"

namespace cardvault::util {

class TokenBucket {
 public:
  // Refills for the time since the last refill; returns the tokens there.
  double Refill(absl::Time now, double per_second, double capacity) {
    tokens_ = tokens_ < 0
                  ? capacity
                  : std::min(capacity,
                             tokens_ + absl::ToDoubleSeconds(now - refilled_) *
                                           per_second);
    refilled_ = now;
    return tokens_;
  }

  // Takes one token (after a Refill that found one).
  void Take() { tokens_ -= 1; }

  // Refills, then takes a token if there is one.
  bool TryTake(absl::Time now, double per_second, double capacity) {
    if (Refill(now, per_second, capacity) < 1) return false;
    Take();
    return true;
  }

  // Whether it would be full at `now` without taking anything.
  bool FullAt(absl::Time now, double per_second, double capacity) const {
    return TokensAt(now, per_second, capacity) >= capacity;
  }

  // The tokens it would hold at `now`, without refilling.
  double TokensAt(absl::Time now, double per_second, double capacity) const {
    if (tokens_ < 0) return capacity;
    return std::min(capacity, tokens_ + absl::ToDoubleSeconds(now - refilled_) *
                                            per_second);
  }

  // Starts it with `tokens` at `at` instead of full.
  void Start(absl::Time at, double tokens) {
    refilled_ = at;
    tokens_ = tokens;
  }

 private:
  double tokens_ = -1;  // < 0: not used yet (full)
  absl::Time refilled_;
};

}  // namespace cardvault::util

#endif  // CARDVAULT_SERVER_UTIL_TOKEN_BUCKET_H_
