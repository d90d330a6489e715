// The holder's side of a CVV another node's Detokenize asks for (role NODE,
// NodePeer.TakeHeldCvv, cvv_holders.h): the CVV this node holds for a live
// token leaves at most once, after its audit record is durable. A class of
// its own, not part of Detokenizer: it answers a peer, not a caller of the
// token API, and shares none of Detokenize's state (velocity limits, peers).
//
// Thread safety: thread-safe (immutable after construction; the cache
// decides which of concurrent callers gets the CVV).
#ifndef CARDVAULT_SERVER_VAULT_CVV_RELEASE_H_
#define CARDVAULT_SERVER_VAULT_CVV_RELEASE_H_

#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/auth/access_policy.h"
#include "server/crypto/secret_bytes.h"
#include "server/vault/token_calls.h"
#include "server/vault/token_requests.h"

namespace cardvault::vault {

class HeldCvvRelease {
 public:
  // `calls` must outlive this.
  explicit HeldCvvRelease(const TokenCalls* calls) : calls_(calls) {}

  // As Vault::ReleaseHeldCvv.
  absl::StatusOr<std::optional<crypto::SecretBytes>> ReleaseHeldCvv(
      const auth::Caller& caller, absl::string_view token) const;

 private:
  const TokenCalls* const calls_;
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_CVV_RELEASE_H_
