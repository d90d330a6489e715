// The management of tokens already made: what a token stands for
// (GetTokenInfo, never the PAN) and its deletion (DeleteToken), each
// recorded in the audit trail, allowed or not.
//
// Thread safety: thread-safe (immutable after construction).
#ifndef CARDVAULT_SERVER_VAULT_TOKEN_MANAGER_H_
#define CARDVAULT_SERVER_VAULT_TOKEN_MANAGER_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/auth/access_policy.h"
#include "server/vault/call_recorder.h"
#include "server/vault/token_calls.h"
#include "server/vault/token_requests.h"

namespace cardvault::vault {

class TokenManager {
 public:
  // `calls` must outlive the manager.
  explicit TokenManager(const TokenCalls* calls) : calls_(calls) {}

  // As Vault::GetTokenInfoAsync and Vault::DeleteToken.
  void GetTokenInfoAsync(const auth::Caller& caller, absl::string_view token,
                         Done<absl::StatusOr<TokenInfo>> done) const;
  absl::StatusOr<bool> DeleteToken(const auth::Caller& caller,
                                   absl::string_view token) const;

 private:
  const TokenCalls* const calls_;
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_TOKEN_MANAGER_H_
