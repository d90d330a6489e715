// How a vault is set up (Vault::Options) and what it works with
// (Vault::Dependencies), in a header of their own so that the parts the
// vault is built from can take them too. Plain data.
#ifndef CARDVAULT_SERVER_VAULT_VAULT_OPTIONS_H_
#define CARDVAULT_SERVER_VAULT_VAULT_OPTIONS_H_

#include <cstddef>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/auth/access_policy.h"
#include "server/commit/write_path.h"
#include "server/coordination/use_reservations.h"
#include "server/crypto/hmac_sha256.h"
#include "server/storage/token_store.h"
#include "server/vault/cvv_cache.h"
#include "server/vault/cvv_holders.h"
#include "server/vault/key_ring.h"
#include "server/vault/token.h"

namespace cardvault::vault {

struct VaultOptions {
  // Clock for expiry checks and audit timestamps.
  std::function<absl::Time()> now = [] { return absl::Now(); };
  // Fresh random tokens tried before giving up on collisions. With 128
  // random bits a second attempt is already never expected.
  int max_token_attempts = 3;
  // Numeric tokens drawn before RESOURCE_EXHAUSTED: the bound on retries
  // when a (BIN, last four) space is crowded. With k of n tokens taken,
  // a Tokenize fails with probability (k/n)^16.
  int max_numeric_token_attempts = 16;
  // Sources of new tokens (replaced only by tests of collision handling).
  std::function<absl::StatusOr<std::string>()> generate_token = GenerateToken;
  std::function<absl::StatusOr<std::string>(TokenFormat, absl::string_view,
                                            size_t)>
      generate_numeric_token = GenerateNumericToken;
  // How long an idempotency key is remembered. Default 24 hours.
  absl::Duration idempotency_window = absl::Hours(24);
  // Most items in one TokenizeBatch or DetokenizeBatch. Default 1,000.
  size_t max_batch_items = 1000;
  // host:port at which other nodes reach this one, written next to each
  // CVV it holds (cvv_holders.h). Required with Dependencies::cvv_peers.
  std::string node_address;
};

// What the vault works with; all must outlive it.
struct VaultDependencies {
  const storage::RecordStore* records = nullptr;
  const KeyRing* keys = nullptr;
  // HMAC keys of the PAN index (and idempotency keys) and fingerprints.
  const crypto::HmacSha256* index_key = nullptr;
  const crypto::HmacSha256* fingerprint_key = nullptr;
  const CvvCache* cvv_cache = nullptr;
  const auth::PolicyHolder* policy = nullptr;
  const commit::WritePath* audit = nullptr;
  // Where the daily velocity limits are shared with the other nodes on
  // the store (auth::RateLimiter, "Several nodes"; counters named by
  // velocity_reservations.h). nullptr: counted in this process alone,
  // for a store only one process opens (RocksDB).
  const coordination::UseReservations* day_reservations = nullptr;
  // Where CVVs that other nodes hold are taken from (cvv_holders.h).
  // nullptr: a CVV is returned only by the node it was given to.
  const CvvPeers* cvv_peers = nullptr;
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_VAULT_OPTIONS_H_
