#include "server/util/process_hardening.h"

#include <sys/prctl.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace cardvault::util {

absl::Status HardenProcess() {
  struct rlimit none = {0, 0};
  if (setrlimit(RLIMIT_CORE, &none) != 0) {
    return absl::InternalError(
        absl::StrCat("setrlimit(RLIMIT_CORE): ", std::strerror(errno)));
  }
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    return absl::InternalError(
        absl::StrCat("prctl(PR_SET_DUMPABLE): ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

std::string HardeningReport() {
  struct rlimit core = {};
  getrlimit(RLIMIT_CORE, &core);
  return absl::StrCat("dumpable=", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
                      " core_limit=", core.rlim_cur, "/", core.rlim_max);
}

}  // namespace cardvault::util
