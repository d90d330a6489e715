// Detokenize and DetokenizeBatch: authorise, check the purpose, count the
// call against the caller's velocity limits, open the record and return the
// card once the call's audit record is durable (fail closed). A CVV leaves
// with it only for the purposes the policy marks: from this node's cache,
// or asked of the node that holds it (cvv_holders.h).
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_VAULT_DETOKENIZER_H_
#define CARDVAULT_SERVER_VAULT_DETOKENIZER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/auth/access_policy.h"
#include "server/util/log.h"
#include "server/vault/call_recorder.h"
#include "server/vault/card_record.h"
#include "server/vault/token_calls.h"
#include "server/vault/token_requests.h"
#include "server/vault/vault_options.h"

namespace cardvault::vault {

class Detokenizer {
 public:
  // `calls` must outlive the detokenizer.
  explicit Detokenizer(const TokenCalls* calls)
      : calls_(calls), limiter_(MakeDayReserver(calls->deps())) {}

  // The limiter's reserver refers to this object.
  Detokenizer(const Detokenizer&) = delete;
  Detokenizer& operator=(const Detokenizer&) = delete;

  // As Vault::DetokenizeAsync and Vault::DetokenizeBatch.
  void DetokenizeAsync(const auth::Caller& caller, DetokenizeRequest request,
                       Done<absl::StatusOr<Detokenized>> done) const;
  absl::StatusOr<std::vector<absl::StatusOr<Detokenized>>> DetokenizeBatch(
      const auth::Caller& caller,
      const std::vector<DetokenizeRequest>& requests) const;

  // As Vault::ResumeVelocityCounts.
  void ResumeVelocityCounts(
      const std::map<std::string, uint64_t>& counters) const {
    limiter_.SeedFromCounters(counters, calls_->options().now());
  }

  // Calls refused by a velocity limit so far (for alerting).
  uint64_t velocity_denials() const { return velocity_denials_.load(); }

 private:
  struct DetokenizeWork;
  struct DetokenizeCall;

  // What the limiter reserves daily uses with: deps.day_reservations under
  // velocity_reservations.h's counter names (nullptr without them).
  auth::RateLimiter::DayReserver MakeDayReserver(
      const VaultDependencies& deps) const;

  // Records a Detokenize item's token and purpose in `event` by the rule of
  // recorded_value.h: as themselves when well-formed (token) or listed
  // (purpose), else as markers.
  void RecordRequested(const auth::AccessPolicy& policy,
                       const DetokenizeRequest& r,
                       audit::AuditEvent* event) const;
  // The shared path of Detokenize and DetokenizeBatch.
  void DetokenizeAll(const auth::Caller& caller,
                     std::vector<DetokenizeRequest> requests,
                     absl::string_view rpc,
                     Done<std::vector<absl::StatusOr<Detokenized>>> done) const;
  // Checks one Detokenize item (purpose, token, velocity, domain) and opens
  // its record, filling in `event`.
  // An attempt counted against a daily limit names its durable counter in
  // `*day_counter`.
  absl::StatusOr<OpenedCard> FindForDetokenize(const auth::AccessPolicy& policy,
                                               const auth::Caller& caller,
                                               const DetokenizeRequest& r,
                                               absl::Time now,
                                               audit::AuditEvent* event,
                                               std::string* day_counter) const;
  // The other node holding the CVV of `r.token` that this Detokenize may
  // receive ("" for none), noted in `event`.
  std::string RemoteCvvHolder(const auth::AccessPolicy& policy,
                              const DetokenizeRequest& r, absl::Time now,
                              audit::AuditEvent* event) const;
  // Finishes `call` once the items `remote` of `results` have asked their
  // holders for their CVVs.
  void TakeRemoteCvvs(std::unique_ptr<DetokenizeCall> call,
                      std::vector<absl::StatusOr<Detokenized>> results,
                      const std::vector<size_t>& remote) const;

  const TokenCalls* const calls_;
  mutable auth::RateLimiter limiter_;
  mutable std::atomic<uint64_t> velocity_denials_{0};
  // Failed reservations of daily uses, logged at most once a second.
  mutable util::LogRate reservation_log_{1};
  // CVVs other nodes could not give, logged at most once a second.
  mutable util::LogRate peer_log_{1};
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_DETOKENIZER_H_
