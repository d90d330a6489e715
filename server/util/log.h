// Minimal structured logging to stderr (Debian 12's abseil has no absl/log).
// Callers pass only messages they composed themselves: never request
// messages, card data or key bytes. Every message is passed through
// SafeText (server/util/safe_text.h) as a second line of defence: possible
// card numbers masked, control characters escaped (one event, one line),
// at most kMaxLogMessageBytes.
//
// Thread safety: thread-safe (one write(2) per line).
#ifndef CARDVAULT_SERVER_UTIL_LOG_H_
#define CARDVAULT_SERVER_UTIL_LOG_H_

#include <cstddef>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/util/token_bucket.h"

namespace cardvault::util {

enum class Severity { kInfo, kWarning, kError };

inline constexpr size_t kMaxLogMessageBytes = 4096;

// Writes "2026-01-02T03:04:05.678Z I cardvaultd: <message>\n" to stderr.
void Log(Severity severity, absl::string_view message);

// As Log, for a message a library composed from what a peer sent (gRPC,
// protobuf): masked also for digits grouped by separators.
void LogLibraryMessage(Severity severity, absl::string_view message);

inline void LogInfo(absl::string_view m) { Log(Severity::kInfo, m); }
inline void LogWarning(absl::string_view m) { Log(Severity::kWarning, m); }
inline void LogError(absl::string_view m) { Log(Severity::kError, m); }

// Lines that a caller can cause, one per call or handshake (refusals,
// library messages), let through at most `per_second` a second (and a burst
// as large); the rest are counted and the next line written says how many.
//
// Thread safety: thread-safe.
class LogRate {
 public:
  explicit LogRate(double per_second) : per_second_(per_second) {}
  // Writes `message` if the rate allows, with the count of lines suppressed
  // since the last one written.
  // `library`: a message the server did not compose (a library's), masked
  // with CardNumbers::kGroupedToo.
  void Log(Severity severity, absl::string_view message, bool library = false);

 private:
  const double per_second_;
  absl::Mutex mu_;
  TokenBucket bucket_ ABSL_GUARDED_BY(mu_);
  uint64_t suppressed_ ABSL_GUARDED_BY(mu_) = 0;
};

// As LogInfo without the card-number mask, for lines made only of values
// the server computed, such as a chain MAC in hex whose digit runs could
// look like a card number. Control characters are still escaped.
void LogComputedValues(absl::string_view message);

}  // namespace cardvault::util

#endif  // CARDVAULT_SERVER_UTIL_LOG_H_
