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

#include "absl/strings/string_view.h"

namespace cardvault::util {

enum class Severity { kInfo, kWarning, kError };

inline constexpr size_t kMaxLogMessageBytes = 4096;

// Writes "2026-01-02T03:04:05.678Z I cardvaultd: <message>\n" to stderr.
void Log(Severity severity, absl::string_view message);

inline void LogInfo(absl::string_view m) { Log(Severity::kInfo, m); }
inline void LogWarning(absl::string_view m) { Log(Severity::kWarning, m); }
inline void LogError(absl::string_view m) { Log(Severity::kError, m); }

// As LogInfo without the card-number mask, for lines made only of values
// the server computed, such as a chain MAC in hex whose digit runs could
// look like a card number. Control characters are still escaped.
void LogComputedValues(absl::string_view message);

}  // namespace cardvault::util

#endif  // CARDVAULT_SERVER_UTIL_LOG_H_
