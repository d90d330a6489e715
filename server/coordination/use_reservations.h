// Blocks of a bounded count of uses (encryptions under one data key, a
// caller's calls of one day) that nodes reserve from the shared table
// before they use them, so that all nodes together never pass the bound:
// a node uses only what it reserved, and what it reserved but did not use
// (it stopped, or died) is lost, never given out twice.
//
// The reserved total of counter `c` is the row "uses/<c>" of Table::kShared,
// format 1, byte by byte:
//   offset  size  field
//   0       1     format version, kReservationFormatV1 = 0x01
//   1       8     uses reserved so far, all nodes together, uint64 big-endian
//   9       8     random nonce of the reservation that wrote the row, so
//                 that an unknown commit outcome is resolved by reading the
//                 row back (a value no other reservation writes)
// It only grows, by compare-and-set (storage::CommitUnaudited).
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_COORDINATION_USE_RESERVATIONS_H_
#define CARDVAULT_SERVER_COORDINATION_USE_RESERVATIONS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/storage/transaction.h"

namespace cardvault::coordination {

inline constexpr uint8_t kReservationFormatV1 = 0x01;
inline constexpr size_t kReservationBytes = 17;
inline constexpr size_t kMaxCounterNameBytes = 128;

// Shared-table key of counter `counter`'s reserved total.
std::string ReservationKey(absl::string_view counter);

class UseReservations {
 public:
  struct Options {
    // Compare-and-set attempts of one reservation against other nodes'
    // before UNAVAILABLE. Default 32.
    int max_attempts = 32;
  };

  // `store` must outlive the reservations.
  static absl::StatusOr<std::unique_ptr<UseReservations>> Create(
      const storage::Store* store, Options options);

  struct Grant {
    // Uses reserved by this call: at least the minimum asked for.
    uint64_t granted = 0;
    // Every node's reservations of the counter after this one.
    uint64_t total = 0;
  };

  // Reserves `wanted` more uses of `counter`, or as many as are left under
  // `limit` if that is fewer but at least `minimum` (1 <= minimum <=
  // wanted). RESOURCE_EXHAUSTED when fewer than `minimum` are left;
  // UNAVAILABLE when the store cannot be read or written (nothing
  // reserved).
  absl::StatusOr<Grant> Reserve(absl::string_view counter, uint64_t minimum,
                                uint64_t wanted, uint64_t limit) const;

  // Every node's reservations of `counter` so far (0 if none).
  absl::StatusOr<uint64_t> Reserved(absl::string_view counter) const;

 private:
  UseReservations(const storage::Store* store, Options options)
      : store_(store), options_(options) {}

  const storage::Store* const store_;
  const Options options_;
};

}  // namespace cardvault::coordination

#endif  // CARDVAULT_SERVER_COORDINATION_USE_RESERVATIONS_H_
