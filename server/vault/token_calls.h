// What the vault's use cases about tokens (tokenizer.h, detokenizer.h,
// token_manager.h, cvv_release.h) share: what they work with and how they
// are set up, how they record, the checks a batch call and a call about one
// token make first, the one audit event of a batch, and reading a token's
// record.
//
// Thread safety: thread-safe (immutable after construction).
#ifndef CARDVAULT_SERVER_VAULT_TOKEN_CALLS_H_
#define CARDVAULT_SERVER_VAULT_TOKEN_CALLS_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/auth/access_policy.h"
#include "server/vault/call_recorder.h"
#include "server/vault/card_record.h"
#include "server/vault/vault_options.h"

namespace cardvault::vault {

// A single call takes the path of a batch: a batch of one `request`, and
// the completion that hands its one result to `done`.
template <typename Request>
std::vector<Request> BatchOfOne(Request request) {
  std::vector<Request> one;
  one.push_back(std::move(request));
  return one;
}
template <typename Result>
Done<std::vector<Result>> FirstResult(Done<Result> done) {
  return [done = std::move(done)](std::vector<Result> results) mutable {
    std::move(done)(std::move(results[0]));
  };
}

class TokenCalls {
 public:
  // A call about one token that passed the checks it makes first: the
  // policy it was checked under, and its event.
  struct Started {
    std::shared_ptr<const auth::AccessPolicy> policy;
    audit::AuditEvent event;
  };

  // `deps` and `options` as checked by Vault::Create; `recorder` and what
  // `deps` points to must outlive this.
  TokenCalls(const VaultDependencies& deps, VaultOptions options,
             const CallRecorder* recorder)
      : deps_(deps), options_(std::move(options)), recorder_(recorder) {}

  const VaultDependencies& deps() const { return deps_; }
  const VaultOptions& options() const { return options_; }
  const CallRecorder& recorder() const { return *recorder_; }

  // A batch call's own checks: the role, then 1 to max_batch_items items.
  // A refusal is recorded as a call of `rpc` before it is returned
  // (UNAVAILABLE if it cannot be recorded).
  absl::Status CheckBatch(const auth::Caller& caller,
                          auth::Permission permission,
                          ::cardvault::v1::EventType type,
                          absl::string_view rpc, size_t items) const;
  // The checks every call about one token makes first: the caller's
  // `permission`, then the token's form (recorded in `event`).
  absl::Status CheckTokenCall(const auth::AccessPolicy& policy,
                              const auth::Caller& caller,
                              auth::Permission permission,
                              absl::string_view token,
                              audit::AuditEvent* event) const;
  // Starts a synchronous call of `rpc` about one `token` under the policy
  // in force, with the checks of CheckTokenCall; a refusal is recorded
  // before it is returned (UNAVAILABLE if it cannot be recorded).
  absl::StatusOr<Started> StartTokenCall(const auth::Caller& caller,
                                         ::cardvault::v1::EventType type,
                                         absl::string_view rpc,
                                         auth::Permission permission,
                                         absl::string_view token) const;

  // The one audit event of a batch call of `rpc`, which lists its items and
  // leaves them only what differs between them; none for single calls.
  std::optional<audit::AuditEvent> BatchEvent(const auth::AccessPolicy& policy,
                                              const auth::Caller& caller,
                                              ::cardvault::v1::EventType type,
                                              absl::string_view rpc) const;

  // Reads and opens the record of a well-formed `token` (the caller checks
  // its expiry): NOT_FOUND, UNAVAILABLE or DATA_LOSS otherwise.
  absl::StatusOr<OpenedCard> OpenRecord(absl::string_view token,
                                        std::string* record = nullptr) const;

 private:
  const VaultDependencies deps_;
  const VaultOptions options_;
  const CallRecorder* const recorder_;
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_TOKEN_CALLS_H_
