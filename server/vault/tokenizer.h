// Tokenize and TokenizeBatch: authorise, validate, seal, store and record
// each card, returning its token once its record and audit event are
// durable in one write. Deterministic requests and idempotent retries
// return the token already held.
//
// Every item of a call is planned and written in one write; only items
// whose write condition lost a race (token drawn twice, index or
// idempotency entry written concurrently) are planned again, off the audit
// writer's thread, for a bounded number of rounds.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_VAULT_TOKENIZER_H_
#define CARDVAULT_SERVER_VAULT_TOKENIZER_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/auth/access_policy.h"
#include "server/commit/write_path.h"
#include "server/util/blocking_executor.h"
#include "server/vault/call_recorder.h"
#include "server/vault/server_events.h"
#include "server/vault/token_calls.h"
#include "server/vault/token_requests.h"

namespace cardvault::vault {

class Tokenizer {
 public:
  // `calls` and `server_events` must outlive the tokenizer.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(
      const TokenCalls* calls, const ServerEvents* server_events);

  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // As Vault::TokenizeAsync and Vault::TokenizeBatch.
  void TokenizeAsync(const auth::Caller& caller, TokenizeRequest request,
                     Done<absl::StatusOr<Tokenized>> done) const;
  absl::StatusOr<std::vector<absl::StatusOr<Tokenized>>> TokenizeBatch(
      const auth::Caller& caller, std::vector<TokenizeRequest> requests) const;

 private:
  struct TokenizeWork;
  struct TokenizeCall;

  Tokenizer(const TokenCalls* calls, const ServerEvents* server_events,
            std::unique_ptr<util::BlockingExecutor> replanner)
      : calls_(calls),
        server_events_(server_events),
        replanner_(std::move(replanner)) {}

  // The shared path of Tokenize and TokenizeBatch: one result per request,
  // in order, through `done`.
  void TokenizeAll(const auth::Caller& caller,
                   std::vector<TokenizeRequest> requests, absl::string_view rpc,
                   Done<std::vector<absl::StatusOr<Tokenized>>> done) const;
  // Plans the items of `call` still without a result and writes them.
  void TokenizeRound(std::unique_ptr<TokenizeCall> call) const;
  // Takes the results of a round's write; plans again what lost a race.
  void TokenizeWritten(std::unique_ptr<TokenizeCall> call,
                       std::vector<commit::Entry>& entries) const;
  // Validates `w`'s request (first round) and plans its next audit entry.
  void CheckTokenizeRequest(const auth::AccessPolicy& policy,
                            const auth::Caller& caller, TokenizeWork& w) const;
  commit::Entry PlanTokenize(TokenizeWork& w, bool last_round) const;
  // Writes into `mutation` that this node holds the CVV of `w`'s request
  // for `token` (nothing without cvv_peers or a CVV).
  void NameCvvHolder(const TokenizeWork& w, absl::string_view token,
                     commit::Mutation* mutation) const;

  const TokenCalls* const calls_;
  const ServerEvents* const server_events_;
  // Plans again, off the audit writer's thread, the items whose write lost
  // a race (planning reads storage and may rotate a key). One thread: such
  // races are rare. Declared last: it finishes its work first on
  // destruction.
  const std::unique_ptr<util::BlockingExecutor> replanner_;
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_TOKENIZER_H_
