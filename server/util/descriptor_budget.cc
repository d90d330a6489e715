#include "server/util/descriptor_budget.h"

#include <dirent.h>
#include <sys/resource.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/util/log.h"

namespace cardvault::util {
namespace {

std::atomic<uint64_t> exhaustions{0};

}  // namespace

std::string DescriptorBudget::Report() const {
  return absl::StrCat("descriptors=", limit, "/", hard, " reserved=", reserved,
                      " connections=", for_connections,
                      " open=", open_at_start);
}

uint64_t OpenDescriptors() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  uint64_t n = 0;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n > 0 ? n - 1 : 0;  // the directory's own descriptor
}

uint64_t FilesUnder(const std::string& dir) {
  std::error_code ec;
  uint64_t n = 0;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_regular_file(ec)) ++n;
  }
  return n;
}

absl::StatusOr<DescriptorBudget> RaiseDescriptorLimit(uint64_t reserved) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    return absl::InternalError(
        absl::StrCat("getrlimit(RLIMIT_NOFILE): ", std::strerror(errno)));
  }
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  DescriptorBudget budget;
  budget.limit = limit.rlim_cur;
  budget.hard = limit.rlim_max;
  budget.open_at_start = OpenDescriptors();
  budget.reserved = reserved + budget.open_at_start;
  if (budget.limit < budget.reserved + kMinConnectionDescriptors) {
    return absl::FailedPreconditionError(
        absl::StrCat("the descriptor limit (RLIMIT_NOFILE ", budget.limit,
                     ") leaves fewer than ", kMinConnectionDescriptors,
                     " descriptors for connections after ", budget.reserved,
                     " reserved; raise LimitNOFILE= (or ulimit -n) or lower "
                     "limits.reserved_descriptors"));
  }
  budget.for_connections = budget.limit - budget.reserved;
  return budget;
}

void NoteDescriptorExhaustion(absl::string_view where) {
  ++exhaustions;
  static LogRate* const alerts = new LogRate(1);
  alerts->Log(
      Severity::kError,
      absl::StrCat("ALERT out of file descriptors (EMFILE/ENFILE) ", where,
                   ": see cardvault_descriptor_exhaustion_total"
                   " and the start-up descriptor budget"));
}

void NoteIfOutOfDescriptors(absl::string_view message,
                            absl::string_view where) {
  // strerror(EMFILE) is "Too many open files", strerror(ENFILE) "Too many
  // open files in system".
  if (absl::StrContains(message, "Too many open files")) {
    NoteDescriptorExhaustion(where);
  }
}

uint64_t DescriptorExhaustions() { return exhaustions.load(); }

}  // namespace cardvault::util
