#include "server/util/log.h"

#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace cardvault::util {

void Log(Severity severity, absl::string_view message) {
  const char level = severity == Severity::kInfo      ? 'I'
                     : severity == Severity::kWarning ? 'W'
                                                      : 'E';
  std::string line =
      absl::StrCat(absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                                    absl::UTCTimeZone()),
                   " ", std::string(1, level), " cardvaultd: ", message, "\n");
  (void)!write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace cardvault::util
