#include "server/util/metrics_file.h"

#include <cerrno>
#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "server/util/descriptor_budget.h"
#include "server/util/log.h"

namespace cardvault::util {

MetricsFile::MetricsFile(std::string path, std::vector<Counter> counters,
                         absl::Duration interval)
    : path_(std::move(path)), counters_(std::move(counters)) {
  (void)WriteNow();
  thread_ = std::thread([this, interval] {
    while (!stop_.WaitForNotificationWithTimeout(interval)) {
      if (absl::Status s = WriteNow(); !s.ok()) LogError(s.ToString());
    }
  });
}

MetricsFile::~MetricsFile() {
  stop_.Notify();
  thread_.join();
  (void)WriteNow();
}

absl::Status MetricsFile::WriteNow() const {
  std::string text;
  for (const Counter& c : counters_) {
    absl::StrAppend(&text, "# HELP ", c.name, " ", c.help, "\n# TYPE ", c.name,
                    c.gauge ? " gauge\n" : " counter\n", c.name, " ", c.read(),
                    "\n");
  }
  const std::string tmp = path_ + ".tmp";
  {
    errno = 0;
    std::ofstream out(tmp, std::ios::trunc);
    if (!out && (errno == EMFILE || errno == ENFILE)) {
      NoteDescriptorExhaustion("writing the metrics file");
    }
    out << text;
    if (!out) {
      return absl::UnavailableError(
          absl::StrCat("cannot write metrics file ", tmp));
    }
  }
  if (std::rename(tmp.c_str(), path_.c_str()) != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot rename metrics file to ", path_));
  }
  return absl::OkStatus();
}

}  // namespace cardvault::util
