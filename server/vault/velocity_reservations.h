// The daily velocity limits shared by the nodes on one store
// (auth::RateLimiter, "Several nodes"): where a node reserves its uses, and
// the purge of past days' reservations.
//
// The uses of `identity`'s Detokenize calls on UTC day `day` are the
// reservation counter (coordination/use_reservations.h)
//   DayCounterId(day, hex(HMAC-SHA256(index key, "cardvault/velocity" ||
//                                     len(identity) || identity)[0..16)))
// e.g. "velocity/20417/<32 hex digits>" (47 bytes; at most 62, under
// kMaxCounterNameBytes), so its row "uses/velocity/<day>/<hex>" of
// Table::kShared names neither the identity (up to 255 bytes of a
// certificate's SAN or CN) nor anything of a card, and holds only a count
// and a random nonce. Every node derives the same name: the index key is one
// for the cluster, and it is never rotated.
//
// A row is used on its day (and the day after by a node whose clock is
// behind); PurgeVelocityReservations deletes the rows of days before
// yesterday. cardvaultd runs it as the "velocity-purge" background job
// (hourly, on the node holding the background lease). Not by a TTL: the
// stores' expiry (RocksDbStorage/PostgresStore Options::expiry_of,
// StoredExpiry) reads a row's value alone, a reservation row holds no time,
// and StoredExpiry keeps every Table::kShared row.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_VAULT_VELOCITY_RESERVATIONS_H_
#define CARDVAULT_SERVER_VAULT_VELOCITY_RESERVATIONS_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/crypto/hmac_sha256.h"
#include "server/storage/token_store.h"
#include "server/storage/transaction.h"

namespace cardvault::vault {

// Bytes of the keyed digest naming an identity in a counter (128 bits).
inline constexpr size_t kVelocityDigestBytes = 16;

// The reservation counter of `identity`'s calls on UTC day `day`.
std::string VelocityReservationCounter(const crypto::HmacSha256& index_key,
                                       int64_t day, absl::string_view identity);

// Deletes every reservation row of a daily velocity counter whose day is
// before yesterday (UTC days of `now`), `batch` rows a write at most, each
// write under `fence` (the background lease's) and on condition that the
// row is unchanged. The number of rows deleted; FAILED_PRECONDITION when a
// condition failed (the lease was lost, or a row changed: the next run
// finds it again), or the store's error (UNAVAILABLE, UNKNOWN).
absl::StatusOr<uint64_t> PurgeVelocityReservations(
    const storage::RecordStore& records,
    const storage::TransactionalStore& writer, absl::Time now,
    const storage::Condition& fence, size_t batch);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_VELOCITY_RESERVATIONS_H_
