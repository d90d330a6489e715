// Tokenization business logic: authorise, validate, seal, store, audit; and
// back. Knows nothing of gRPC or RocksDB.
//
// Every call is recorded in the audit trail, allowed or not. A Tokenize's
// record is written in the same atomic write as its token; a Detokenize's
// record is durable before any card data is returned, and if it cannot be
// written the call fails with UNAVAILABLE (fail closed).
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_VAULT_VAULT_H_
#define CARDVAULT_SERVER_VAULT_VAULT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "server/audit/audit_log.h"
#include "server/auth/access_policy.h"
#include "server/storage/token_store.h"
#include "server/vault/card.h"
#include "server/vault/card_record.h"
#include "server/vault/key_ring.h"
#include "server/vault/token.h"

namespace cardvault::vault {

inline constexpr char kTokenizeRpc[] = "/cardvault.v1.TokenVault/Tokenize";
inline constexpr char kDetokenizeRpc[] = "/cardvault.v1.TokenVault/Detokenize";
inline constexpr char kListEventsRpc[] = "/cardvault.v1.AuditLog/ListEvents";
inline constexpr char kVerifyChainRpc[] = "/cardvault.v1.AuditLog/VerifyChain";

// Which audit events an auditor asks for; empty fields match everything.
struct AuditFilter {
  std::optional<absl::Time> start_time;  // inclusive
  std::optional<absl::Time> end_time;    // exclusive
  std::string identity;
  ::cardvault::v1::EventType event_type =
      ::cardvault::v1::EVENT_TYPE_UNSPECIFIED;
  std::string token;
  uint32_t max_events = 0;  // 0 = no limit
};

// A new token and the domain it was bound to.
struct Tokenized {
  std::string token;
  std::string domain;
};

class Vault {
 public:
  struct Options {
    // Clock for expiry checks and audit timestamps.
    std::function<absl::Time()> now = [] { return absl::Now(); };
    // Fresh tokens tried before giving up on collisions. With 128 random bits
    // a second attempt is already never expected.
    int max_token_attempts = 3;
    // Source of new tokens (replaced only by tests of collision handling).
    std::function<absl::StatusOr<std::string>()> generate_token = GenerateToken;
  };

  // All pointers must outlive the vault.
  static absl::StatusOr<std::unique_ptr<Vault>> Create(
      const storage::TokenStore* tokens, const KeyRing* keys,
      const auth::PolicyHolder* policy, const audit::AuditLog* audit,
      Options options);

  // Stores `card`, bound to `domain` (or the caller's default domain when
  // empty), and returns its new token once the record and its audit event
  // are durable. PERMISSION_DENIED (role or domain), INVALID_ARGUMENT (bad
  // card, value never echoed), UNAVAILABLE (storage or audit trail).
  absl::StatusOr<Tokenized> Tokenize(const auth::Caller& caller,
                                     const Card& card,
                                     absl::string_view domain = "") const;

  // The card under `token`, for a declared `purpose`. PERMISSION_DENIED
  // (role), INVALID_ARGUMENT (malformed token, unknown purpose),
  // RESOURCE_EXHAUSTED (velocity limit), NOT_FOUND (no such token, or one of
  // a domain the caller may not detokenize: the two are indistinguishable so
  // that token existence does not leak across domains), UNAVAILABLE,
  // DATA_LOSS (record failed integrity).
  absl::StatusOr<OpenedCard> Detokenize(const auth::Caller& caller,
                                        absl::string_view token,
                                        absl::string_view purpose) const;

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

  // Records a key event (e.g. creation); `detail` names the key, never its
  // material.
  absl::Status RecordKeyEvent(absl::string_view detail) const;

  // Records a policy reload, applied (OK) or refused (its error).
  absl::Status RecordPolicyReload(const absl::Status& outcome) const;

  // Detokenize calls refused by a velocity limit so far (for alerting).
  uint64_t velocity_denials() const { return velocity_denials_.load(); }

  // Records a server start or stop.
  absl::Status RecordLifecycle(::cardvault::v1::EventType type) const;

 private:
  Vault(const storage::TokenStore* tokens, const KeyRing* keys,
        const auth::PolicyHolder* policy, const audit::AuditLog* audit,
        Options options);

  audit::AuditEvent NewEvent(const auth::Caller& caller,
                             ::cardvault::v1::EventType type,
                             absl::string_view rpc) const;
  // An event of the server itself (start, stop, keys, policy).
  audit::AuditEvent ServerEvent(::cardvault::v1::EventType type) const;
  // Records `event` with the outcome `status` and returns `status`; if the
  // record cannot be written, UNAVAILABLE.
  absl::Status Record(audit::AuditEvent event,
                      const absl::Status& status) const;

  const storage::TokenStore* const tokens_;
  const KeyRing* const keys_;
  const auth::PolicyHolder* const policy_;
  const audit::AuditLog* const audit_;
  const Options options_;
  mutable auth::RateLimiter limiter_;
  mutable std::atomic<uint64_t> velocity_denials_{0};
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_VAULT_H_
