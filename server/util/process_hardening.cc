#include "server/util/process_hardening.h"

#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>

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
  // Every file and directory the vault makes (database, backups, staging
  // copies, restore markers) is its user's alone, whatever the parent.
  umask(077);
  return absl::OkStatus();
}

std::string HardeningReport() {
  struct rlimit core = {};
  getrlimit(RLIMIT_CORE, &core);
  const mode_t mask = umask(077);
  umask(mask);
  return absl::StrCat("dumpable=", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
                      " core_limit=", core.rlim_cur, "/", core.rlim_max,
                      " umask=0", (mask >> 6) & 7, (mask >> 3) & 7, mask & 7);
}

}  // namespace cardvault::util
