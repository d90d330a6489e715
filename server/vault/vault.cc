#include "server/vault/vault.h"

#include <string>
#include <utility>

#include "server/util/node_address.h"

namespace cardvault::vault {

using ::cardvault::v1::EventType;

absl::StatusOr<std::unique_ptr<Vault>> Vault::Create(Dependencies deps,
                                                     Options options) {
  if (deps.records == nullptr || deps.keys == nullptr ||
      deps.index_key == nullptr || deps.fingerprint_key == nullptr ||
      deps.cvv_cache == nullptr || deps.policy == nullptr ||
      deps.audit == nullptr) {
    return absl::InvalidArgumentError("vault dependencies must not be null");
  }
  if (options.max_token_attempts < 1 ||
      options.max_numeric_token_attempts < 1 || !options.now ||
      !options.generate_token || !options.generate_numeric_token ||
      options.idempotency_window <= absl::ZeroDuration() ||
      options.max_batch_items == 0) {
    return absl::InvalidArgumentError("bad vault options");
  }
  if (deps.cvv_peers != nullptr && !util::IsNodeAddress(options.node_address)) {
    return absl::InvalidArgumentError(
        "a vault that takes CVVs from other nodes needs its own node address");
  }
  auto vault = std::unique_ptr<Vault>(new Vault(deps, options));
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::Create(&vault->calls_, &vault->server_events_);
  if (!tokenizer.ok()) return tokenizer.status();
  vault->tokenizer_ = *std::move(tokenizer);
  return vault;
}

absl::StatusOr<Tokenized> Vault::Tokenize(const auth::Caller& caller,
                                          TokenizeRequest request) const {
  return Await<absl::StatusOr<Tokenized>>(
      [&](Done<absl::StatusOr<Tokenized>> done) {
        TokenizeAsync(caller, std::move(request), std::move(done));
      });
}

void Vault::TokenizeAsync(const auth::Caller& caller, TokenizeRequest request,
                          Done<absl::StatusOr<Tokenized>> done) const {
  tokenizer_->TokenizeAsync(caller, std::move(request), std::move(done));
}

absl::StatusOr<Tokenized> Vault::Tokenize(const auth::Caller& caller, Card card,
                                          absl::string_view domain) const {
  TokenizeRequest request;
  request.card = std::move(card);
  request.domain = std::string(domain);
  return Tokenize(caller, std::move(request));
}

absl::StatusOr<std::vector<absl::StatusOr<Tokenized>>> Vault::TokenizeBatch(
    const auth::Caller& caller, std::vector<TokenizeRequest> requests) const {
  return tokenizer_->TokenizeBatch(caller, std::move(requests));
}

absl::StatusOr<Detokenized> Vault::Detokenize(const auth::Caller& caller,
                                              absl::string_view token,
                                              absl::string_view purpose) const {
  return Await<absl::StatusOr<Detokenized>>(
      [&](Done<absl::StatusOr<Detokenized>> done) {
        DetokenizeAsync(caller, {std::string(token), std::string(purpose)},
                        std::move(done));
      });
}

void Vault::DetokenizeAsync(const auth::Caller& caller,
                            DetokenizeRequest request,
                            Done<absl::StatusOr<Detokenized>> done) const {
  detokenizer_.DetokenizeAsync(caller, std::move(request), std::move(done));
}

absl::StatusOr<std::vector<absl::StatusOr<Detokenized>>> Vault::DetokenizeBatch(
    const auth::Caller& caller,
    const std::vector<DetokenizeRequest>& requests) const {
  return detokenizer_.DetokenizeBatch(caller, requests);
}

absl::StatusOr<TokenInfo> Vault::GetTokenInfo(const auth::Caller& caller,
                                              absl::string_view token) const {
  return Await<absl::StatusOr<TokenInfo>>(
      [&](Done<absl::StatusOr<TokenInfo>> done) {
        GetTokenInfoAsync(caller, token, std::move(done));
      });
}

void Vault::GetTokenInfoAsync(const auth::Caller& caller,
                              absl::string_view token,
                              Done<absl::StatusOr<TokenInfo>> done) const {
  token_manager_.GetTokenInfoAsync(caller, token, std::move(done));
}

absl::StatusOr<bool> Vault::DeleteToken(const auth::Caller& caller,
                                        absl::string_view token) const {
  return token_manager_.DeleteToken(caller, token);
}

absl::StatusOr<std::optional<crypto::SecretBytes>> Vault::ReleaseHeldCvv(
    const auth::Caller& caller, absl::string_view token) const {
  return cvv_release_.ReleaseHeldCvv(caller, token);
}

absl::Status Vault::ListAuditEvents(
    const auth::Caller& caller, const AuditFilter& filter,
    const std::function<bool(const audit::AuditEvent&)>& visit) const {
  return audit_reader_.ListAuditEvents(caller, filter, visit);
}

absl::StatusOr<audit::ChainReport> Vault::VerifyAuditChain(
    const auth::Caller& caller,
    const std::optional<audit::Checkpoint>& checkpoint) const {
  return audit_reader_.VerifyAuditChain(caller, checkpoint);
}

absl::Status Vault::RecordRejected(const auth::Caller& caller, EventType type,
                                   absl::string_view rpc,
                                   const absl::Status& status) const {
  return recorder_.Record(recorder_.NewEvent(caller, type, rpc), status);
}

void Vault::RecordRejectedAsync(const auth::Caller& caller, EventType type,
                                absl::string_view rpc,
                                const absl::Status& status) const {
  recorder_.RecordAsync(recorder_.NewEvent(caller, type, rpc), status,
                        [](absl::Status) {});
}

std::string Vault::RecordedIdentity(const auth::Caller& caller) const {
  return recorder_.RecordedIdentity(caller);
}

absl::Status Vault::RecordKeyEvent(absl::string_view detail) const {
  return server_events_.RecordKeyEvent(detail);
}

absl::Status Vault::RecordPolicyReload(const absl::Status& outcome,
                                       absl::string_view detail) const {
  return server_events_.RecordPolicyReload(outcome, detail);
}

absl::StatusOr<uint32_t> Vault::RotateDataKey() const {
  return server_events_.RotateDataKey();
}

absl::Status Vault::DestroyDataKey(uint32_t version) const {
  return server_events_.DestroyDataKey(version);
}

absl::Status Vault::RecordLifecycle(EventType type,
                                    absl::string_view detail) const {
  return server_events_.RecordLifecycle(type, detail);
}

}  // namespace cardvault::vault
