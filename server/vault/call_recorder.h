// How every use case of the vault records its calls in the audit trail: an
// event per call, named by the caller, the policy in force and the RPC,
// written with the call's outcome, allowed or not; values a caller sent go
// in only as recorded_value.h allows. Tokenize, Detokenize, token
// management and the audit reads all record through one of these.
//
// Thread safety: thread-safe (immutable after construction).
#ifndef CARDVAULT_SERVER_VAULT_CALL_RECORDER_H_
#define CARDVAULT_SERVER_VAULT_CALL_RECORDER_H_

#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/auth/access_policy.h"
#include "server/commit/write_path.h"

namespace cardvault::vault {

// Completion of an asynchronous call; it runs exactly once (see Vault).
template <typename T>
using Done = absl::AnyInvocable<void(T) &&>;

// Starts an asynchronous call with a completion that hands its result back
// here, and waits for it: the synchronous form of every …Async call.
template <typename T, typename Start>
T Await(Start start) {
  absl::Notification finished;
  std::optional<T> result;
  start([&](T r) {
    result.emplace(std::move(r));
    finished.Notify();
  });
  finished.WaitForNotification();
  return *std::move(result);
}

class CallRecorder {
 public:
  // `policy` and `trail` must outlive the recorder; `now` stamps events.
  CallRecorder(const auth::PolicyHolder* policy, const commit::WritePath* trail,
               std::function<absl::Time()> now)
      : policy_(policy), trail_(trail), now_(std::move(now)) {}

  // The event of a call of `rpc` by `caller`, under the policy in force or
  // the one the call already holds (one read of the policy per call).
  audit::AuditEvent NewEvent(const auth::Caller& caller,
                             ::cardvault::v1::EventType type,
                             absl::string_view rpc) const;
  audit::AuditEvent NewEvent(const auth::AccessPolicy& policy,
                             const auth::Caller& caller,
                             ::cardvault::v1::EventType type,
                             absl::string_view rpc) const;
  // An event of the server itself (start, stop, keys, policy).
  audit::AuditEvent ServerEvent(::cardvault::v1::EventType type) const;

  // The caller's identity as a record or log line may hold it: itself when
  // the policy names it, otherwise its marker.
  std::string RecordedIdentity(const auth::Caller& caller) const;
  // A token a caller named, as a record may hold it (recorded_value.h): a
  // well-formed random token as itself; a numeric one only once `found`
  // (digits that merely fail Luhn may be a PAN with a CVV appended, or one
  // digit off); otherwise its marker.
  std::string RecordedToken(absl::string_view token, bool found) const;

  // Records `event` with the outcome `status` and returns `status`; if the
  // record cannot be written, UNAVAILABLE.
  absl::Status Record(audit::AuditEvent event,
                      const absl::Status& status) const;
  // As Record, finishing through `done`.
  void RecordAsync(audit::AuditEvent event, absl::Status status,
                   Done<absl::Status> done) const;

  absl::Time Now() const { return now_(); }

 private:
  const auth::PolicyHolder* const policy_;
  const commit::WritePath* const trail_;
  const std::function<absl::Time()> now_;
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_CALL_RECORDER_H_
