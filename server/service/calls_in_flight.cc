#include "server/service/calls_in_flight.h"

namespace cardvault::service {

void CallsInFlight::Slot::Release() {
  if (owner_ != nullptr) std::exchange(owner_, nullptr)->Release(identity_);
}

std::optional<CallsInFlight::Slot> CallsInFlight::TryAcquire(
    absl::string_view identity) {
  {
    absl::MutexLock lock(&mu_);
    size_t& n = in_flight_[identity];
    if (n < max_per_identity_) {
      ++n;
      return Slot(this, std::string(identity));
    }
  }
  ++refused_;
  return std::nullopt;
}

void CallsInFlight::Release(const std::string& identity) {
  absl::MutexLock lock(&mu_);
  auto it = in_flight_.find(identity);
  if (it != in_flight_.end() && --it->second == 0) in_flight_.erase(it);
}

}  // namespace cardvault::service
