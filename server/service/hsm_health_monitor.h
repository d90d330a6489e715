// Watches the HSM and reports it through gRPC health: NOT_SERVING while the
// device fails, SERVING again once it answers (the session pool reconnects
// on the way). Probes back off exponentially while the device fails, so a
// dead HSM is not hammered.
//
// Thread safety: thread-safe; one background thread.
#ifndef CARDVAULT_SERVER_SERVICE_HSM_HEALTH_MONITOR_H_
#define CARDVAULT_SERVER_SERVICE_HSM_HEALTH_MONITOR_H_

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace cardvault::service {

class HsmHealthMonitor {
 public:
  struct Options {
    // Probe interval while healthy, and the first retry delay when not.
    absl::Duration interval = absl::Seconds(5);
    // Longest delay between probes of a failing device.
    absl::Duration max_backoff = absl::Seconds(60);
  };

  // Starts probing; `on_change(healthy)` runs when the HSM's state changes
  // (main sets the "hsm" condition of the ServingGate).
  HsmHealthMonitor(std::function<absl::Status()> probe,
                   std::function<void(bool)> on_change, Options options);
  HsmHealthMonitor(const HsmHealthMonitor&) = delete;
  HsmHealthMonitor& operator=(const HsmHealthMonitor&) = delete;
  ~HsmHealthMonitor();

  bool healthy() const { return healthy_.load(); }
  // Probes that failed so far (for alerting).
  uint64_t failures() const { return failures_.load(); }

 private:
  void Run();

  const std::function<absl::Status()> probe_;
  const std::function<void(bool)> on_change_;
  const Options options_;
  std::atomic<bool> healthy_{true};
  std::atomic<uint64_t> failures_{0};
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_HSM_HEALTH_MONITOR_H_
