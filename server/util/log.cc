#include "server/util/log.h"

#include <unistd.h>

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/util/safe_text.h"

namespace cardvault::util {
namespace {

void WriteLine(Severity severity, absl::string_view safe_message) {
  const char level = severity == Severity::kInfo      ? 'I'
                     : severity == Severity::kWarning ? 'W'
                                                      : 'E';
  std::string line = absl::StrCat(
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                       absl::UTCTimeZone()),
      " ", std::string(1, level), " cardvaultd: ", safe_message, "\n");
  (void)!write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace

void Log(Severity severity, absl::string_view message) {
  WriteLine(severity, SafeText(message, kMaxLogMessageBytes));
}

void LogLibraryMessage(Severity severity, absl::string_view message) {
  WriteLine(severity,
            SafeText(message, kMaxLogMessageBytes, CardNumbers::kGroupedToo));
}

void LogRate::Log(Severity severity, absl::string_view message, bool library) {
  const absl::Time now = absl::Now();
  uint64_t suppressed = 0;
  {
    absl::MutexLock lock(&mu_);
    if (!bucket_.TryTake(now, per_second_, per_second_)) {
      ++suppressed_;
      return;
    }
    suppressed = std::exchange(suppressed_, 0);
  }
  const std::string line =
      suppressed == 0 ? std::string(message)
                      : absl::StrCat(message, " (", suppressed,
                                     " lines like this suppressed before)");
  if (library) {
    LogLibraryMessage(severity, line);
  } else {
    util::Log(severity, line);
  }
}

void LogComputedValues(absl::string_view message) {
  std::string escaped;
  for (char c : message.substr(0, kMaxLogMessageBytes)) {
    const unsigned char u = static_cast<unsigned char>(c);
    escaped.push_back(u >= 0x20 && u <= 0x7e ? c : '?');
  }
  WriteLine(Severity::kInfo, escaped);
}

}  // namespace cardvault::util
