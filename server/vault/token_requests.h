// What the token use cases of the vault are asked and answer: the RPCs that
// ask, and the requests and results of Tokenize, Detokenize and
// GetTokenInfo. Plain data; the requests and Detokenized hold card data and
// are move-only.
#ifndef CARDVAULT_SERVER_VAULT_TOKEN_REQUESTS_H_
#define CARDVAULT_SERVER_VAULT_TOKEN_REQUESTS_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "server/crypto/secret_bytes.h"
#include "server/vault/card.h"
#include "server/vault/token.h"

namespace cardvault::vault {

inline constexpr char kTokenizeRpc[] = "/cardvault.v1.TokenVault/Tokenize";
inline constexpr char kTakeHeldCvvRpc[] = "/cardvault.v1.NodePeer/TakeHeldCvv";
inline constexpr char kDetokenizeRpc[] = "/cardvault.v1.TokenVault/Detokenize";
inline constexpr char kTokenizeBatchRpc[] =
    "/cardvault.v1.TokenVault/TokenizeBatch";
inline constexpr char kDetokenizeBatchRpc[] =
    "/cardvault.v1.TokenVault/DetokenizeBatch";
inline constexpr char kGetTokenInfoRpc[] =
    "/cardvault.v1.TokenVault/GetTokenInfo";
inline constexpr char kDeleteTokenRpc[] =
    "/cardvault.v1.TokenVault/DeleteToken";

// Longest TTL a token may be given (no card outlives its expiry year bound).
inline constexpr absl::Duration kMaxTokenTtl = absl::Hours(24 * 366 * 50);

// One card to tokenize and how. Move-only (holds card data).
struct TokenizeRequest {
  Card card;
  // Empty: the caller's default domain.
  std::string domain;
  TokenFormat format = TokenFormat::kRandom;
  // Return the token already held for this PAN, domain and format.
  bool deterministic = false;
  // Zero: no TTL (or the domain's maximum).
  absl::Duration ttl = absl::ZeroDuration();
  // Empty: none.
  std::string idempotency_key;
  // Empty: none. Never stored (see cvv_cache.h).
  crypto::SecretBytes cvv;
};

// A token and what it is bound to.
struct Tokenized {
  std::string token;
  std::string domain;
  // False when an existing token was returned (deterministic or replay).
  bool created = true;
  absl::Time expires = absl::InfiniteFuture();
};

struct DetokenizeRequest {
  std::string token;
  std::string purpose;
};

// A card returned by Detokenize, with its domain and any CVV held for it.
struct Detokenized {
  Card card;
  std::string domain;
  std::optional<crypto::SecretBytes> cvv;
};

// What a token stands for, without the PAN.
struct TokenInfo {
  std::string token;
  CardBrand brand = CardBrand::kUnknown;
  std::string bin;
  std::string last_four;
  uint32_t exp_month = 0;
  uint32_t exp_year = 0;
  TokenFormat format = TokenFormat::kRandom;
  std::string domain;
  absl::Time created;
  absl::Time expires = absl::InfiniteFuture();
  std::string fingerprint;
  bool deterministic = false;
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_TOKEN_REQUESTS_H_
