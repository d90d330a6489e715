// The serving status of the vault's health services as the AND of named
// conditions ("hsm", "listener"): each monitor sets its own condition and
// none overrides another's.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_SERVICE_SERVING_GATE_H_
#define CARDVAULT_SERVER_SERVICE_SERVING_GATE_H_

#include <grpcpp/health_check_service_interface.h>

#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace cardvault::service {

class ServingGate {
 public:
  // `health` must outlive the gate; `services` follow it ("" included).
  ServingGate(grpc::HealthCheckServiceInterface* health,
              std::vector<std::string> services)
      : health_(health), services_(std::move(services)) {}

  // Records whether `condition` holds and publishes the result.
  void Set(absl::string_view condition, bool ok) {
    absl::MutexLock lock(&mu_);
    if (ok) {
      failing_.erase(condition);
    } else {
      failing_.insert(std::string(condition));
    }
    for (const std::string& name : services_) {
      health_->SetServingStatus(name, failing_.empty());
    }
  }

  bool serving() const {
    absl::MutexLock lock(&mu_);
    return failing_.empty();
  }

 private:
  grpc::HealthCheckServiceInterface* const health_;
  const std::vector<std::string> services_;
  mutable absl::Mutex mu_;
  absl::flat_hash_set<std::string> failing_ ABSL_GUARDED_BY(mu_);
};

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_SERVING_GATE_H_
