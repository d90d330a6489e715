// How many calls each client identity has in flight, over all its
// connections and every service: one identity cannot take the whole server.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_SERVICE_CALLS_IN_FLIGHT_H_
#define CARDVAULT_SERVER_SERVICE_CALLS_IN_FLIGHT_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace cardvault::service {

class CallsInFlight {
 public:
  // One call's place, given back when destroyed. Move-only.
  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& other) noexcept
        : owner_(std::exchange(other.owner_, nullptr)),
          identity_(std::move(other.identity_)) {}
    Slot& operator=(Slot&& other) noexcept {
      if (this != &other) {
        Release();
        owner_ = std::exchange(other.owner_, nullptr);
        identity_ = std::move(other.identity_);
      }
      return *this;
    }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    ~Slot() { Release(); }

   private:
    friend class CallsInFlight;
    Slot(CallsInFlight* owner, std::string identity)
        : owner_(owner), identity_(std::move(identity)) {}
    void Release();

    CallsInFlight* owner_ = nullptr;
    std::string identity_;
  };

  // `max_per_identity` > 0.
  explicit CallsInFlight(size_t max_per_identity)
      : max_per_identity_(max_per_identity) {}
  CallsInFlight(const CallsInFlight&) = delete;
  CallsInFlight& operator=(const CallsInFlight&) = delete;

  // A place for one more call of `identity`; nullopt when it already has
  // max_per_identity in flight.
  std::optional<Slot> TryAcquire(absl::string_view identity);

  // Calls refused so far (for the metrics file).
  uint64_t refused() const { return refused_.load(); }

 private:
  void Release(const std::string& identity);

  const size_t max_per_identity_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, size_t> in_flight_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> refused_{0};
};

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_CALLS_IN_FLIGHT_H_
