// Keeps secrets out of core dumps and away from debuggers of other users.
#ifndef CARDVAULT_SERVER_UTIL_PROCESS_HARDENING_H_
#define CARDVAULT_SERVER_UTIL_PROCESS_HARDENING_H_

#include <string>

#include "absl/status/status.h"

namespace cardvault::util {

// Sets RLIMIT_CORE to 0 and PR_SET_DUMPABLE to 0 (no core file, no ptrace
// attach by non-root, /proc/PID/mem unreadable), and the umask to 077. Call
// first thing in main.
absl::Status HardenProcess();

// The hardening as the kernel reports it now (prctl(PR_GET_DUMPABLE),
// getrlimit(RLIMIT_CORE)), e.g. "dumpable=0 core_limit=0/0", for the start-up
// log: as root, /proc shows no dumpable flag to check from outside.
std::string HardeningReport();

}  // namespace cardvault::util

#endif  // CARDVAULT_SERVER_UTIL_PROCESS_HARDENING_H_
