#include "server/vault/vault.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/util/log.h"
#include "server/vault/card_record.h"
#include "server/vault/token.h"

namespace cardvault::vault {
namespace {

using ::cardvault::v1::EventType;

void SetTime(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t ms = absl::ToUnixMillis(t);
  out->set_seconds(ms / 1000);
  out->set_nanos(static_cast<int32_t>((ms % 1000) * 1000000));
}

absl::Time TimeOf(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

bool Matches(const AuditFilter& f, const audit::AuditEvent& e) {
  const absl::Time t = TimeOf(e.event_time());
  return (!f.start_time || t >= *f.start_time) &&
         (!f.end_time || t < *f.end_time) &&
         (f.identity.empty() || e.identity() == f.identity) &&
         (f.event_type == v1::EVENT_TYPE_UNSPECIFIED ||
          e.event_type() == f.event_type) &&
         (f.token.empty() || e.token() == f.token);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Vault>> Vault::Create(
    const storage::TokenStore* tokens, const KeyRing* keys,
    const auth::PolicyHolder* policy, const audit::AuditLog* audit,
    Options options) {
  if (tokens == nullptr || keys == nullptr || policy == nullptr ||
      audit == nullptr) {
    return absl::InvalidArgumentError("vault dependencies must not be null");
  }
  if (options.max_token_attempts < 1 || !options.now ||
      !options.generate_token) {
    return absl::InvalidArgumentError("bad vault options");
  }
  return std::unique_ptr<Vault>(
      new Vault(tokens, keys, policy, audit, std::move(options)));
}

Vault::Vault(const storage::TokenStore* tokens, const KeyRing* keys,
             const auth::PolicyHolder* policy, const audit::AuditLog* audit,
             Options options)
    : tokens_(tokens),
      keys_(keys),
      policy_(policy),
      audit_(audit),
      options_(std::move(options)) {}

audit::AuditEvent Vault::NewEvent(const auth::Caller& caller, EventType type,
                                  absl::string_view rpc) const {
  audit::AuditEvent e;
  SetTime(options_.now(), e.mutable_event_time());
  e.set_event_type(type);
  e.set_rpc(std::string(rpc));
  e.set_identity(caller.identity);
  e.set_certificate_serial(caller.certificate_serial);
  e.set_certificate_sha256(caller.certificate_sha256);
  e.set_peer_address(caller.peer);
  e.set_request_id(caller.request_id);
  return e;
}

audit::AuditEvent Vault::ServerEvent(EventType type) const {
  auth::Caller server;
  server.identity = "cardvaultd";
  return NewEvent(server, type, "");
}

absl::Status Vault::Record(audit::AuditEvent event,
                           const absl::Status& status) const {
  event.set_status_code(static_cast<int32_t>(status.code()));
  event.set_status_message(std::string(status.message()));
  if (absl::Status s = audit_->Append(std::move(event)); !s.ok()) {
    return absl::UnavailableError("audit trail unavailable");
  }
  return status;
}

absl::StatusOr<Tokenized> Vault::Tokenize(const auth::Caller& caller,
                                          const Card& card,
                                          absl::string_view domain) const {
  audit::AuditEvent event = NewEvent(caller, v1::TOKENIZE, kTokenizeRpc);
  const std::shared_ptr<const auth::AccessPolicy> policy = policy_->Current();
  // Authorise before looking at the data, so an unauthorised caller learns
  // nothing about validation.
  if (absl::Status s = policy->Check(caller, auth::Permission::kTokenize);
      !s.ok()) {
    return Record(std::move(event), s);
  }
  if (!domain.empty() && auth::IsValidDomain(domain)) {
    event.set_domain(std::string(domain));
  }
  absl::StatusOr<std::string> bound = policy->TokenizeDomain(caller, domain);
  if (!bound.ok()) return Record(std::move(event), bound.status());
  event.set_domain(*bound);
  if (absl::Status s = ValidateCard(card, options_.now()); !s.ok()) {
    return Record(std::move(event), s);
  }
  for (int attempt = 0; attempt < options_.max_token_attempts; ++attempt) {
    absl::StatusOr<std::string> token = options_.generate_token();
    if (!token.ok()) return Record(std::move(event), token.status());
    absl::StatusOr<std::string> record = SealCardRecord(
        keys_->primary(), keys_->primary_version(), *token, *bound, card);
    if (!record.ok()) return Record(std::move(event), record.status());
    audit::AuditEvent success = event;
    success.set_token(*token);
    success.set_status_code(0);
    // The token and its audit record are one atomic, durable write.
    absl::Status written = audit_->Append(
        std::move(success), audit::NewToken{*token, *std::move(record)});
    if (written.ok()) return Tokenized{*std::move(token), *std::move(bound)};
    if (!absl::IsAlreadyExists(written)) {
      return absl::UnavailableError("storage or audit trail unavailable");
    }
  }
  return Record(std::move(event),
                absl::InternalError("could not allocate a unique token"));
}

absl::StatusOr<OpenedCard> Vault::Detokenize(const auth::Caller& caller,
                                             absl::string_view token,
                                             absl::string_view purpose) const {
  audit::AuditEvent event = NewEvent(caller, v1::DETOKENIZE, kDetokenizeRpc);
  const std::shared_ptr<const auth::AccessPolicy> policy = policy_->Current();
  if (absl::Status s = policy->Check(caller, auth::Permission::kDetokenize);
      !s.ok()) {
    return Record(std::move(event), s);
  }
  if (absl::Status s = policy->CheckPurpose(purpose); !s.ok()) {
    return Record(std::move(event), s);
  }
  event.set_purpose(std::string(purpose));
  if (!IsWellFormedToken(token)) {
    return Record(std::move(event),
                  absl::InvalidArgumentError("token is malformed"));
  }
  event.set_token(std::string(token));
  // Every attempt counts against the limit, found or not: the control is
  // against bulk export, including by guessing.
  if (absl::Status s = limiter_.Admit(
          caller.identity, policy->DetokenizeLimit(caller), options_.now());
      !s.ok()) {
    ++velocity_denials_;
    util::LogWarning(absl::StrCat("ALERT velocity limit reached by ",
                                  caller.identity, " (",
                                  velocity_denials_.load(), " denials)"));
    return Record(std::move(event), s);
  }
  const absl::Status not_found = absl::NotFoundError("token not found");
  absl::StatusOr<std::string> record = tokens_->Lookup(token);
  if (absl::IsNotFound(record.status())) {
    return Record(std::move(event), not_found);
  }
  if (!record.ok()) return Record(std::move(event), record.status());
  absl::StatusOr<OpenedCard> opened = OpenCardRecord(*keys_, token, *record);
  if (!opened.ok()) return Record(std::move(event), opened.status());
  event.set_domain(opened->domain);
  if (!policy->MayDetokenize(caller, opened->domain)) {
    // Recorded as what the caller saw; the domain in the record shows why.
    return Record(std::move(event), not_found);
  }
  // Fail closed: no card data leaves unless its record is durable.
  if (absl::Status s = Record(std::move(event), absl::OkStatus()); !s.ok()) {
    return s;
  }
  return opened;
}

absl::Status Vault::ListAuditEvents(
    const auth::Caller& caller, const AuditFilter& filter,
    const std::function<bool(const audit::AuditEvent&)>& visit) const {
  audit::AuditEvent event = NewEvent(caller, v1::LIST_EVENTS, kListEventsRpc);
  event.set_token(filter.token);
  absl::Status allowed =
      policy_->Current()->Check(caller, auth::Permission::kReadAudit);
  if (absl::Status s = Record(std::move(event), allowed); !s.ok()) return s;
  uint32_t sent = 0;
  return audit_->Scan(1, [&](const audit::AuditEvent& e) {
    if (!Matches(filter, e)) return true;
    if (!visit(e)) return false;
    return filter.max_events == 0 || ++sent < filter.max_events;
  });
}

absl::StatusOr<audit::ChainReport> Vault::VerifyAuditChain(
    const auth::Caller& caller,
    const std::optional<audit::Checkpoint>& checkpoint) const {
  audit::AuditEvent event = NewEvent(caller, v1::VERIFY_CHAIN, kVerifyChainRpc);
  absl::Status allowed =
      policy_->Current()->Check(caller, auth::Permission::kReadAudit);
  if (absl::Status s = Record(std::move(event), allowed); !s.ok()) return s;
  return audit_->Verify(checkpoint);
}

absl::Status Vault::RecordRejected(const auth::Caller& caller, EventType type,
                                   absl::string_view rpc,
                                   const absl::Status& status) const {
  return Record(NewEvent(caller, type, rpc), status);
}

absl::Status Vault::RecordKeyEvent(absl::string_view detail) const {
  audit::AuditEvent event = ServerEvent(v1::KEY_EVENT);
  event.set_detail(std::string(detail));
  return audit_->Append(std::move(event));
}

absl::Status Vault::RecordPolicyReload(const absl::Status& outcome) const {
  audit::AuditEvent event = ServerEvent(v1::POLICY_RELOAD);
  event.set_status_code(static_cast<int32_t>(outcome.code()));
  event.set_status_message(std::string(outcome.message()));
  return audit_->Append(std::move(event));
}

absl::Status Vault::RecordLifecycle(EventType type) const {
  return Record(ServerEvent(type), absl::OkStatus());
}

}  // namespace cardvault::vault
