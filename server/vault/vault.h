// Tokenization business logic: authorise, validate, seal, store, audit; and
// back. Knows nothing of gRPC or RocksDB.
//
// Every call is recorded in the audit trail, allowed or not. A Tokenize's
// record is written in the same atomic write as its token; a Detokenize's
// record is durable before any card data is returned, and if it cannot be
// written the call fails with UNAVAILABLE (fail closed).
//
// Tokenize, Detokenize and GetTokenInfo also come in an asynchronous form
// (…Async): the checks, the storage read and the sealing run on the calling
// thread, and the completion runs on the audit writer's thread once the
// write is durable, so no thread is parked per call while the group commit
// waits for its fsync. The synchronous forms wait for the same completion.
//
// Each use case is a part of its own (tokenizer.h, detokenizer.h,
// token_manager.h, cvv_release.h, audit_reader.h, server_events.h), all
// recording through one CallRecorder; the Vault builds them and delegates.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_VAULT_VAULT_H_
#define CARDVAULT_SERVER_VAULT_VAULT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/auth/access_policy.h"
#include "server/vault/audit_reader.h"
#include "server/vault/call_recorder.h"
#include "server/vault/card.h"
#include "server/vault/cvv_release.h"
#include "server/vault/detokenizer.h"
#include "server/vault/server_events.h"
#include "server/vault/token_calls.h"
#include "server/vault/token_manager.h"
#include "server/vault/token_requests.h"
#include "server/vault/tokenizer.h"
#include "server/vault/vault_options.h"

namespace cardvault::vault {

class Vault {
 public:
  // Completion of an asynchronous call; it runs exactly once, on the thread
  // that calls it (…Async) when nothing had to be written, otherwise on the
  // audit writer's thread, so it must be quick and must not wait for the
  // vault or the audit trail (see commit::WritePath::AppendAllAsync).
  template <typename T>
  using Done = vault::Done<T>;

  // How the vault is set up, and what it works with (all must outlive it).
  using Options = VaultOptions;
  using Dependencies = VaultDependencies;

  static absl::StatusOr<std::unique_ptr<Vault>> Create(Dependencies deps,
                                                       Options options);

  // Stores the request's card, bound to its domain (or the caller's default
  // domain when empty), and returns its token once the record and its audit
  // event are durable; for a deterministic request or an idempotent retry,
  // the existing token. PERMISSION_DENIED (role or domain),
  // INVALID_ARGUMENT (bad card, CVV, TTL or reused idempotency key; values
  // never echoed), RESOURCE_EXHAUSTED (no free numeric token), UNAVAILABLE
  // (storage or audit trail).
  absl::StatusOr<Tokenized> Tokenize(const auth::Caller& caller,
                                     TokenizeRequest request) const;
  // As Tokenize, finishing through `done`. `caller` is read only before
  // this returns.
  void TokenizeAsync(const auth::Caller& caller, TokenizeRequest request,
                     Done<absl::StatusOr<Tokenized>> done) const;
  // A random, non-deterministic token for `card` in `domain`.
  absl::StatusOr<Tokenized> Tokenize(const auth::Caller& caller, Card card,
                                     absl::string_view domain = "") const;

  // Tokenizes every request, one result each in order, with one durable
  // write for the batch (more only when a write condition conflicts).
  // PERMISSION_DENIED without the tokenizer role; INVALID_ARGUMENT for an
  // empty batch or one over max_batch_items.
  absl::StatusOr<std::vector<absl::StatusOr<Tokenized>>> TokenizeBatch(
      const auth::Caller& caller, std::vector<TokenizeRequest> requests) const;

  // The card under `token`, for a declared `purpose`, with the CVV given
  // at Tokenize if it is still held (then never again). PERMISSION_DENIED
  // (role), INVALID_ARGUMENT (malformed token, unknown purpose),
  // RESOURCE_EXHAUSTED (velocity limit), NOT_FOUND (no such token, expired,
  // deleted, or one of a domain the caller may not detokenize: the cases are
  // indistinguishable so that token existence does not leak across
  // domains), UNAVAILABLE, DATA_LOSS (record failed integrity).
  absl::StatusOr<Detokenized> Detokenize(const auth::Caller& caller,
                                         absl::string_view token,
                                         absl::string_view purpose) const;

  // As Detokenize, finishing through `done`. `caller` is read only before
  // this returns.
  void DetokenizeAsync(const auth::Caller& caller, DetokenizeRequest request,
                       Done<absl::StatusOr<Detokenized>> done) const;

  // Detokenizes every request with one durable write of their audit
  // records; results as for TokenizeBatch.
  absl::StatusOr<std::vector<absl::StatusOr<Detokenized>>> DetokenizeBatch(
      const auth::Caller& caller,
      const std::vector<DetokenizeRequest>& requests) const;

  // What `token` stands for, never the PAN. PERMISSION_DENIED (role),
  // INVALID_ARGUMENT (malformed), NOT_FOUND as for Detokenize.
  absl::StatusOr<TokenInfo> GetTokenInfo(const auth::Caller& caller,
                                         absl::string_view token) const;
  // As GetTokenInfo, finishing through `done`. `caller` and `token` are read
  // only before this returns.
  void GetTokenInfoAsync(const auth::Caller& caller, absl::string_view token,
                         Done<absl::StatusOr<TokenInfo>> done) const;

  // Removes `token`'s record, its PAN index entry and any CVV held, in one
  // write with its audit record. True if this call removed it; false (OK)
  // when there is nothing of the caller's to remove.
  absl::StatusOr<bool> DeleteToken(const auth::Caller& caller,
                                   absl::string_view token) const;

  // For another node answering a Detokenize (role NODE): the CVV this node
  // holds for `token`, removed as it leaves, once its audit record is
  // durable; nullopt when none is held. PERMISSION_DENIED (role),
  // INVALID_ARGUMENT (malformed token), UNAVAILABLE.
  absl::StatusOr<std::optional<crypto::SecretBytes>> ReleaseHeldCvv(
      const auth::Caller& caller, absl::string_view token) const;

  // Streams matching audit events to `visit` (stop by returning false). Needs
  // the auditor role; the read itself is recorded first.
  absl::Status ListAuditEvents(
      const auth::Caller& caller, const AuditFilter& filter,
      const std::function<bool(const audit::AuditEvent&)>& visit) const;

  // Verifies the audit chain. Needs the auditor role; recorded first.
  absl::StatusOr<audit::ChainReport> VerifyAuditChain(
      const auth::Caller& caller,
      const std::optional<audit::Checkpoint>& checkpoint = std::nullopt) const;

  // Records a call the service layer refused before it reached the vault
  // (no usable identity, fields the server does not accept) and returns
  // `status` (UNAVAILABLE if it cannot be recorded).
  absl::Status RecordRejected(const auth::Caller& caller,
                              ::cardvault::v1::EventType type,
                              absl::string_view rpc,
                              const absl::Status& status) const;

  // As RecordRejected, without waiting for the write: for refusals the
  // server has already answered.
  void RecordRejectedAsync(const auth::Caller& caller,
                           ::cardvault::v1::EventType type,
                           absl::string_view rpc,
                           const absl::Status& status) const;

  // The caller's identity as an audit record or log line may hold it: as
  // itself when the policy names it, otherwise its marker
  // (server/audit/recorded_value.h).
  std::string RecordedIdentity(const auth::Caller& caller) const;

  // Records a key event (e.g. creation); `detail` names the key, never its
  // material.
  absl::Status RecordKeyEvent(absl::string_view detail) const;

  // Records a policy reload, applied (OK) or refused (its error), with what
  // identifies the new file and what changed (`detail`).
  absl::Status RecordPolicyReload(const absl::Status& outcome,
                                  absl::string_view detail) const;

  // Resumes today's Detokenize counts from stored counters (the storage's
  // counters, DayCounterId), after a restart. With day_reservations the
  // cluster-wide bound is the reservations'; the resumed count (all nodes'
  // calls until the start) only adds a bound of this node's.
  void ResumeVelocityCounts(
      const std::map<std::string, uint64_t>& counters) const {
    detokenizer_.ResumeVelocityCounts(counters);
  }

  // Detokenize calls refused by a velocity limit so far (for alerting).
  uint64_t velocity_denials() const { return detokenizer_.velocity_denials(); }

  // Makes a new data key primary now (on demand) and records it.
  absl::StatusOr<uint32_t> RotateDataKey() const;

  // Destroys a retired data key (the last re-encryption pass found no record
  // under it) and records it. FAILED_PRECONDITION for any other key.
  absl::Status DestroyDataKey(uint32_t version) const;

  // Records a server start or stop.
  absl::Status RecordLifecycle(::cardvault::v1::EventType type,
                               absl::string_view detail = "") const;

  size_t max_batch_items() const { return calls_.options().max_batch_items; }

 private:
  // Builds every part but the tokenizer, which Create adds (it can fail).
  Vault(const Dependencies& deps, const Options& options)
      : recorder_(deps.policy, deps.audit, options.now),
        audit_reader_(&recorder_, deps.policy, deps.audit, deps.records),
        server_events_(&recorder_, deps.keys, deps.audit),
        calls_(deps, options, &recorder_),
        detokenizer_(&calls_),
        token_manager_(&calls_),
        cvv_release_(&calls_) {}

  // How every call is recorded; the parts below record through it.
  const CallRecorder recorder_;
  const AuditReader audit_reader_;
  const ServerEvents server_events_;
  const TokenCalls calls_;
  const Detokenizer detokenizer_;
  const TokenManager token_manager_;
  const HeldCvvRelease cvv_release_;
  // Set once by Create. Declared last: its replanner finishes its work
  // first on destruction, while the parts it uses are still there.
  std::unique_ptr<const Tokenizer> tokenizer_;
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_VAULT_H_
