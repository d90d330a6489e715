// Minimal structured logging to stderr (Debian 12's abseil has no absl/log).
// Callers pass only messages they composed themselves: never request
// messages, card data or key bytes.
//
// Thread safety: thread-safe (one write(2) per line).
#ifndef CARDVAULT_SERVER_UTIL_LOG_H_
#define CARDVAULT_SERVER_UTIL_LOG_H_

#include "absl/strings/string_view.h"

namespace cardvault::util {

enum class Severity { kInfo, kWarning, kError };

// Writes "2026-01-02T03:04:05.678Z I cardvaultd: <message>\n" to stderr.
void Log(Severity severity, absl::string_view message);

inline void LogInfo(absl::string_view m) { Log(Severity::kInfo, m); }
inline void LogWarning(absl::string_view m) { Log(Severity::kWarning, m); }
inline void LogError(absl::string_view m) { Log(Severity::kError, m); }

}  // namespace cardvault::util

#endif  // CARDVAULT_SERVER_UTIL_LOG_H_
