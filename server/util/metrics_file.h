// Counters exported as a Prometheus text file, for node_exporter's textfile
// collector (or any agent that tails a file), so that alerts can watch
// security-control failures without a network listener of its own.
// Metric names and labels never carry card data.
//
// Thread safety: thread-safe; one background thread.
#ifndef CARDVAULT_SERVER_UTIL_METRICS_FILE_H_
#define CARDVAULT_SERVER_UTIL_METRICS_FILE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace cardvault::util {

struct Counter {
  std::string name;  // e.g. "cardvault_audit_write_failures_total"
  std::string help;
  std::function<uint64_t()> read;
  // A value that goes down as well as up (Prometheus "gauge").
  bool gauge = false;
};

class MetricsFile {
 public:
  // Writes `counters` to `path` now and then every `interval` (atomically:
  // a temporary file renamed over the old one).
  MetricsFile(std::string path, std::vector<Counter> counters,
              absl::Duration interval);
  MetricsFile(const MetricsFile&) = delete;
  MetricsFile& operator=(const MetricsFile&) = delete;
  // Writes a last time and stops.
  ~MetricsFile();

  absl::Status WriteNow() const;

 private:
  const std::string path_;
  const std::vector<Counter> counters_;
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace cardvault::util

#endif  // CARDVAULT_SERVER_UTIL_METRICS_FILE_H_
