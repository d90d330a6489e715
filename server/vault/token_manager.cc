#include "server/vault/token_manager.h"

#include <memory>
#include <string>
#include <utility>

#include "server/vault/audit_event.h"
#include "server/vault/card_record.h"
#include "server/vault/cvv_holders.h"
#include "server/vault/index_entry.h"

namespace cardvault::vault {

void TokenManager::GetTokenInfoAsync(
    const auth::Caller& caller, absl::string_view token,
    Done<absl::StatusOr<TokenInfo>> done) const {
  const CallRecorder& recorder = calls_->recorder();
  const std::shared_ptr<const auth::AccessPolicy> policy =
      calls_->deps().policy->Current();
  audit::AuditEvent event =
      recorder.NewEvent(*policy, caller, v1::TOKEN_INFO, kGetTokenInfoRpc);
  // A refusal: recorded, then answered.
  auto refuse = [&](absl::Status status) {
    recorder.RecordAsync(std::move(event), std::move(status),
                         [done = std::move(done)](absl::Status s) mutable {
                           std::move(done)(std::move(s));
                         });
  };
  if (absl::Status s = calls_->CheckTokenCall(
          *policy, caller, auth::Permission::kReadTokenInfo, token, &event);
      !s.ok()) {
    return refuse(std::move(s));
  }
  absl::StatusOr<OpenedCard> opened = calls_->OpenRecord(token);
  if (!opened.ok()) return refuse(opened.status());
  event.set_token(std::string(token));
  const RecordHeader& h = opened->header;
  event.set_domain(h.domain);
  if (h.expires <= calls_->options().now() ||
      !policy->MayReadTokenInfo(caller, h.domain)) {
    return refuse(absl::NotFoundError("token not found"));
  }
  const absl::string_view pan = opened->card.pan.view();
  TokenInfo info;
  info.token = std::string(token);
  info.brand = BrandOf(pan);
  info.bin = std::string(pan.substr(
      0, KeptBinDigits(pan.size(), policy->SettingsOf(h.domain).bin_digits)));
  info.last_four = std::string(pan.substr(pan.size() - kKeptLastDigits));
  info.exp_month = opened->card.exp_month;
  info.exp_year = opened->card.exp_year;
  info.format = h.format;
  info.domain = h.domain;
  info.created = h.created;
  info.expires = h.expires;
  info.fingerprint =
      Fingerprint(*calls_->deps().fingerprint_key, h.domain, pan);
  info.deterministic = h.deterministic;
  recorder.RecordAsync(
      std::move(event), absl::OkStatus(),
      [info = std::move(info), done = std::move(done)](absl::Status s) mutable {
        if (s.ok()) {
          std::move(done)(std::move(info));
        } else {
          std::move(done)(std::move(s));
        }
      });
}

absl::StatusOr<bool> TokenManager::DeleteToken(const auth::Caller& caller,
                                               absl::string_view token) const {
  absl::StatusOr<TokenCalls::Started> call =
      calls_->StartTokenCall(caller, v1::DELETE_TOKEN, kDeleteTokenRpc,
                             auth::Permission::kDeleteToken, token);
  if (!call.ok()) return call.status();
  const auth::AccessPolicy& policy = *call->policy;
  audit::AuditEvent& event = call->event;
  const VaultDependencies& deps = calls_->deps();
  const CallRecorder& recorder = calls_->recorder();
  // A concurrent change of the record or its index entry makes the write
  // condition fail; the delete is then planned again on fresh reads.
  for (int attempt = 0; attempt < calls_->options().max_token_attempts;
       ++attempt) {
    std::string record;
    absl::StatusOr<OpenedCard> opened = calls_->OpenRecord(token, &record);
    if (absl::IsNotFound(opened.status())) {
      event.set_detail("nothing to delete");
      if (absl::Status s = recorder.Record(event, absl::OkStatus()); !s.ok())
        return s;
      return false;
    }
    if (!opened.ok()) return recorder.Record(std::move(event), opened.status());
    event.set_token(std::string(token));
    const RecordHeader& h = opened->header;
    event.set_domain(h.domain);
    if (!policy.MayDeleteToken(caller, h.domain)) {
      // Same answer as for an absent token: existence does not leak.
      event.set_detail("nothing of the caller's to delete");
      if (absl::Status s = recorder.Record(event, absl::OkStatus()); !s.ok())
        return s;
      return false;
    }
    commit::Mutation mutation;
    mutation.conditions.push_back(
        {storage::Table::kTokens, std::string(token), record});
    mutation.writes.push_back(
        {storage::Table::kTokens, std::string(token), std::nullopt});
    if (h.deterministic) {
      const std::string key = PanIndexKey(*deps.index_key, h.domain, h.format,
                                          opened->card.pan.view());
      absl::StatusOr<std::string> v =
          deps.records->Get(storage::Table::kPanIndex, key);
      if (!v.ok() && !absl::IsNotFound(v.status())) {
        return recorder.Record(std::move(event),
                               absl::UnavailableError("storage unavailable"));
      }
      absl::StatusOr<IndexEntry> entry =
          v.ok() ? DecodeIndexEntry(*v) : absl::NotFoundError("");
      if (entry.ok() && entry->token == token) {
        mutation.conditions.push_back({storage::Table::kPanIndex, key, *v});
        mutation.writes.push_back(
            {storage::Table::kPanIndex, key, std::nullopt});
      }
    }
    if (deps.cvv_peers != nullptr) {
      // No other node asks the holder for this token's CVV any more.
      mutation.writes.push_back(
          {storage::Table::kShared, CvvHolderKey(token), std::nullopt});
    }
    audit::AuditEvent done = event;
    done.set_detail("deleted record and index entries");
    SetOutcome(absl::OkStatus(), &done);
    absl::Status written = deps.audit->Append(std::move(done), mutation);
    if (absl::IsAborted(written)) continue;
    if (!written.ok()) {
      return absl::UnavailableError("storage or audit trail unavailable");
    }
    deps.cvv_cache->Erase(token);
    return true;
  }
  return recorder.Record(
      std::move(event),
      absl::AbortedError("conflicting concurrent requests; retry"));
}

}  // namespace cardvault::vault
