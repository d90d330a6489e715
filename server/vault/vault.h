// Tokenization business logic: authorise, validate, seal, store; and back.
// Knows nothing of gRPC or RocksDB.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_VAULT_VAULT_H_
#define CARDVAULT_SERVER_VAULT_VAULT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "server/auth/access_policy.h"
#include "server/storage/token_store.h"
#include "server/vault/card.h"
#include "server/vault/key_ring.h"

namespace cardvault::vault {

class Vault {
 public:
  struct Options {
    // Clock for expiry checks.
    std::function<absl::Time()> now = [] { return absl::Now(); };
    // Fresh tokens tried before giving up on collisions. With 128 random bits
    // a second attempt is already never expected.
    int max_token_attempts = 3;
  };

  // All pointers must outlive the vault.
  static absl::StatusOr<std::unique_ptr<Vault>> Create(
      const storage::TokenStore* tokens, const KeyRing* keys,
      const auth::AccessPolicy* policy, Options options);

  // Stores `card` and returns its new token once the record is durable.
  // PERMISSION_DENIED, INVALID_ARGUMENT (bad card, value never echoed),
  // UNAVAILABLE (storage).
  absl::StatusOr<std::string> Tokenize(const auth::Caller& caller,
                                       const Card& card) const;

  // The card under `token`. PERMISSION_DENIED, INVALID_ARGUMENT (malformed
  // token), NOT_FOUND, UNAVAILABLE, DATA_LOSS (record failed integrity).
  absl::StatusOr<Card> Detokenize(const auth::Caller& caller,
                                  absl::string_view token) const;

 private:
  Vault(const storage::TokenStore* tokens, const KeyRing* keys,
        const auth::AccessPolicy* policy, Options options);

  const storage::TokenStore* const tokens_;
  const KeyRing* const keys_;
  const auth::AccessPolicy* const policy_;
  const Options options_;
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_VAULT_H_
