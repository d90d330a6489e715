#include "server/vault/cvv_release.h"

#include <memory>
#include <string>
#include <utility>

#include "server/vault/audit_event.h"
#include "server/vault/card_record.h"
#include "server/vault/cvv_holders.h"

namespace cardvault::vault {

absl::StatusOr<std::optional<crypto::SecretBytes>>
HeldCvvRelease::ReleaseHeldCvv(const auth::Caller& caller,
                               absl::string_view token) const {
  absl::StatusOr<TokenCalls::Started> call =
      calls_->StartTokenCall(caller, v1::CVV_RELEASE, kTakeHeldCvvRpc,
                             auth::Permission::kTakeHeldCvv, token);
  if (!call.ok()) return call.status();
  audit::AuditEvent& event = call->event;
  const VaultDependencies& deps = calls_->deps();
  const VaultOptions& options = calls_->options();
  const CallRecorder& recorder = calls_->recorder();
  const absl::Time now = options.now();
  // Only the CVV of a token that still exists leaves: one deleted (on any
  // node) or expired is dropped here instead.
  absl::StatusOr<std::string> record =
      deps.records->Get(storage::Table::kTokens, token);
  if (!record.ok() && !absl::IsNotFound(record.status())) {
    return recorder.Record(std::move(event),
                           absl::UnavailableError("storage unavailable"));
  }
  bool live = record.ok();
  if (live) {
    absl::StatusOr<RecordHeader> header = ParseRecordHeader(*record);
    live = header.ok() && header->expires > now;
  }
  if (!live) deps.cvv_cache->Erase(token);
  // Taken before the record is written, so that of concurrent callers only
  // the one that gets the CVV records a release; put back if the record
  // cannot be written (fail closed).
  std::optional<crypto::SecretBytes> cvv =
      live ? deps.cvv_cache->Take(token, now) : std::nullopt;
  event.set_detail(cvv.has_value() ? "cvv released"
                   : live          ? "no cvv held"
                                   : "no such token: nothing released");
  SetOutcome(absl::OkStatus(), &event);
  // The row naming this node goes with the CVV, so no node asks again; only
  // while it still names this node (a later Tokenize may name another).
  commit::Mutation mutation;
  const std::string key = CvvHolderKey(token);
  absl::StatusOr<std::string> row =
      cvv.has_value() ? deps.records->Get(storage::Table::kShared, key)
                      : absl::NotFoundError("no CVV released");
  if (row.ok()) {
    absl::StatusOr<CvvHolder> holder = DecodeCvvHolder(*row);
    if (holder.ok() && holder->address == options.node_address) {
      mutation.conditions.push_back({storage::Table::kShared, key, *row});
      mutation.writes.push_back({storage::Table::kShared, key, std::nullopt});
    }
  }
  absl::Status written = deps.audit->Append(event, mutation);
  if (absl::IsAborted(written)) {
    written = deps.audit->Append(std::move(event), commit::Mutation());
  }
  if (!written.ok()) {
    if (cvv.has_value()) (void)deps.cvv_cache->Put(token, *cvv, now);
    return absl::UnavailableError("storage or audit trail unavailable");
  }
  return cvv;
}

}  // namespace cardvault::vault
