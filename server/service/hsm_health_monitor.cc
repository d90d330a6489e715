#include "server/service/hsm_health_monitor.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/util/log.h"

namespace cardvault::service {

HsmHealthMonitor::HsmHealthMonitor(std::function<absl::Status()> probe,
                                   std::function<void(bool)> on_change,
                                   Options options)
    : probe_(std::move(probe)),
      on_change_(std::move(on_change)),
      options_(options) {
  thread_ = std::thread([this] { Run(); });
}

HsmHealthMonitor::~HsmHealthMonitor() {
  stop_.Notify();
  thread_.join();
}

void HsmHealthMonitor::Run() {
  absl::Duration wait = options_.interval;
  int consecutive_failures = 0;
  do {
    const absl::Status status = probe_();
    const bool ok = status.ok();
    if (!ok) ++failures_;
    if (ok != healthy_.exchange(ok)) {
      // Logged first: whoever sees the health status change finds its cause
      // in the log already.
      if (ok) {
        util::LogInfo("HSM reachable again: serving");
      } else {
        util::LogError(absl::StrCat("ALERT HSM unavailable, not serving: ",
                                    status.ToString()));
      }
      on_change_(ok);
    }
    // interval, then 2x, 4x... of it while the device keeps failing.
    consecutive_failures = ok ? 0 : consecutive_failures + 1;
    wait = options_.interval;
    for (int i = 1; i < consecutive_failures && wait < options_.max_backoff;
         ++i) {
      wait *= 2;
    }
    wait = std::min(wait, options_.max_backoff);
  } while (!stop_.WaitForNotificationWithTimeout(wait));
}

}  // namespace cardvault::service
