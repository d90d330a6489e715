#include "server/vault/vault.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "server/util/big_endian.h"
#include "server/util/log.h"
#include "server/util/node_address.h"
#include "server/vault/audit_event.h"
#include "server/vault/card_record.h"
#include "server/vault/index_entry.h"
#include "server/vault/token.h"
#include "server/vault/velocity_reservations.h"

namespace cardvault::vault {
namespace {

using ::cardvault::v1::EventType;

// Every item is planned and written in one write; only items whose write
// condition lost a race (token drawn twice, index or idempotency entry
// written concurrently) are planned again, at most this many rounds.
int TokenizeRounds(const Vault::Options& options) {
  return std::max(options.max_token_attempts,
                  options.max_numeric_token_attempts) +
         3;
}

absl::string_view TokenFormatName(TokenFormat format) {
  switch (format) {
    case TokenFormat::kRandom:
      return "random";
    case TokenFormat::kLastFour:
      return "last_four";
    case TokenFormat::kBinLastFour:
      return "bin_last_four";
  }
  return "unknown";
}

}  // namespace

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
  // Unbounded: what waits there is calls already admitted.
  absl::StatusOr<std::unique_ptr<util::BlockingExecutor>> replanner =
      util::BlockingExecutor::Create(
          {.threads = 1, .max_queued = std::numeric_limits<size_t>::max()});
  if (!replanner.ok()) return replanner.status();
  return std::unique_ptr<Vault>(
      new Vault(deps, std::move(options), *std::move(replanner)));
}

std::string Vault::RecordedIdentity(const auth::Caller& caller) const {
  return recorder_.RecordedIdentity(caller);
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

std::optional<audit::AuditEvent> Vault::BatchEvent(
    const auth::AccessPolicy& policy, const auth::Caller& caller,
    EventType type, absl::string_view rpc) const {
  if (rpc != kTokenizeBatchRpc && rpc != kDetokenizeBatchRpc) {
    return std::nullopt;
  }
  audit::AuditEvent event = recorder_.NewEvent(policy, caller, type, rpc);
  SetOutcome(absl::OkStatus(), &event);
  return event;
}

// One Tokenize item on its way through one or more planning rounds.
struct Vault::TokenizeWork {
  TokenizeRequest* request = nullptr;
  audit::AuditEvent event;
  absl::Time now;
  std::string domain;
  bool deterministic = false;
  uint32_t bin_digits = 6;
  absl::Time expires = absl::InfiniteFuture();
  std::string index_key;        // deterministic only
  std::string idempotency_key;  // keyed; with an idempotency key only
  std::string request_digest;
  int tokens_drawn = 0;
  // Whether a CVV sent with the request is held once written: not for an
  // idempotent retry, which creates nothing.
  bool hold_cvv = true;
  // The data key of this round's new record, if any.
  std::optional<KeyRing::Lease> lease;
  // What this round's audit entry records: a refusal, or an answer.
  std::optional<absl::Status> refusal;
  std::optional<Tokenized> answer;
  // Set once the entry is durable (or cannot be).
  std::optional<absl::StatusOr<Tokenized>> result;
};

absl::StatusOr<Tokenized> Vault::Tokenize(const auth::Caller& caller,
                                          TokenizeRequest request) const {
  return Await<absl::StatusOr<Tokenized>>(
      [&](Done<absl::StatusOr<Tokenized>> done) {
        TokenizeAsync(caller, std::move(request), std::move(done));
      });
}

void Vault::TokenizeAsync(const auth::Caller& caller, TokenizeRequest request,
                          Done<absl::StatusOr<Tokenized>> done) const {
  std::vector<TokenizeRequest> one;
  one.push_back(std::move(request));
  TokenizeAll(caller, std::move(one), kTokenizeRpc,
              [done = std::move(done)](
                  std::vector<absl::StatusOr<Tokenized>> results) mutable {
                std::move(done)(std::move(results[0]));
              });
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
  if (absl::Status s =
          CheckBatch(caller, auth::Permission::kTokenize, requests.size());
      !s.ok()) {
    return recorder_.Record(
        recorder_.NewEvent(caller, v1::TOKENIZE, kTokenizeBatchRpc), s);
  }
  using Results = std::vector<absl::StatusOr<Tokenized>>;
  return Await<Results>([&](Done<Results> done) {
    TokenizeAll(caller, std::move(requests), kTokenizeBatchRpc,
                std::move(done));
  });
}

void Vault::CheckTokenizeRequest(const auth::AccessPolicy& policy,
                                 const auth::Caller& caller,
                                 TokenizeWork& w) const {
  const TokenizeRequest& r = *w.request;
  w.event.set_domain(
      deps_.audit->marker().Recorded(r.domain, policy.KnowsDomain(r.domain)));
  absl::StatusOr<std::string> bound = policy.TokenizeDomain(caller, r.domain);
  if (!bound.ok()) {
    w.refusal = bound.status();
    return;
  }
  w.domain = *std::move(bound);
  w.event.set_domain(w.domain);
  const auth::DomainSettings& settings = policy.SettingsOf(w.domain);
  w.bin_digits = settings.bin_digits;
  w.deterministic = r.deterministic || settings.deterministic;
  absl::Status valid = ValidateCard(r.card, w.now);
  if (valid.ok() && !r.cvv.empty()) valid = ValidateCvv(r.cvv.view());
  if (valid.ok() && (r.format < TokenFormat::kRandom ||
                     r.format > TokenFormat::kBinLastFour)) {
    valid = absl::InvalidArgumentError("format is not a known token format");
  }
  if (valid.ok() && r.ttl != absl::ZeroDuration() &&
      (r.ttl < absl::Seconds(1) || r.ttl > kMaxTokenTtl)) {
    valid = absl::InvalidArgumentError(
        "ttl must be between one second and 50 years");
  }
  if (valid.ok() && settings.max_ttl > absl::ZeroDuration() &&
      r.ttl > settings.max_ttl) {
    valid = absl::InvalidArgumentError(
        "ttl exceeds the maximum of the token domain");
  }
  if (valid.ok() && r.idempotency_key.size() > kMaxIdempotencyKeyBytes) {
    valid =
        absl::InvalidArgumentError("idempotency_key must be at most 128 bytes");
  }
  if (!valid.ok()) {
    w.refusal = valid;
    return;
  }
  const absl::Duration ttl =
      r.ttl > absl::ZeroDuration() ? r.ttl : settings.max_ttl;
  if (ttl > absl::ZeroDuration()) {
    w.expires = absl::FromUnixMillis(absl::ToUnixMillis(w.now + ttl));
  }
  w.event.set_detail(absl::StrCat(
      "format=", TokenFormatName(r.format),
      w.deterministic ? " deterministic" : "",
      ttl > absl::ZeroDuration() ? absl::StrCat(" ttl=", FormatDuration(ttl))
                                 : "",
      r.cvv.empty() ? "" : " cvv-held-in-memory"));
  const absl::string_view pan = r.card.pan.view();
  if (w.deterministic) {
    w.index_key = PanIndexKey(*deps_.index_key, w.domain, r.format, pan);
  }
  if (!r.idempotency_key.empty()) {
    w.idempotency_key =
        IdempotencyKey(*deps_.index_key, caller.identity, r.idempotency_key);
    std::string fixed(1, static_cast<char>(r.format));
    fixed.push_back(w.deterministic ? 1 : 0);
    // Whether a CVV came with it (never the CVV, which is not stored).
    fixed.push_back(r.cvv.empty() ? 0 : 1);
    util::AppendBigEndian64(
        static_cast<uint64_t>(absl::ToInt64Milliseconds(ttl)), &fixed);
    fixed.push_back(static_cast<char>(r.card.exp_month));
    util::AppendBigEndian16(static_cast<uint16_t>(r.card.exp_year), &fixed);
    const std::string domain_len(1, static_cast<char>(w.domain.size()));
    const std::string pan_len(1, static_cast<char>(pan.size()));
    w.request_digest = deps_.index_key->ComputeSecret(
        {"cardvault/idempotency-request", domain_len, w.domain, fixed, pan_len,
         pan, r.card.cardholder_name.view()});
  }
}

void Vault::NameCvvHolder(const TokenizeWork& w, absl::string_view token,
                          commit::Mutation* mutation) const {
  if (deps_.cvv_peers == nullptr || w.request->cvv.empty()) return;
  // The address was checked at Create, so the row always encodes.
  absl::StatusOr<std::string> row =
      EncodeCvvHolder({.expires = w.now + deps_.cvv_cache->ttl(),
                       .address = options_.node_address});
  if (!row.ok()) return;
  mutation->writes.push_back(
      {storage::Table::kShared, CvvHolderKey(token), *std::move(row)});
}

commit::Entry Vault::PlanTokenize(TokenizeWork& w, bool last_round) const {
  commit::Entry entry;
  w.answer.reset();
  w.lease.reset();
  w.hold_cvv = true;
  auto refuse = [&](absl::Status status) {
    w.refusal = std::move(status);
    entry.event = w.event;
    SetOutcome(*w.refusal, &entry.event);
    return std::move(entry);
  };
  if (w.refusal.has_value()) return refuse(*w.refusal);
  if (last_round) {
    return refuse(absl::AbortedError("conflicting concurrent requests; retry"));
  }
  const TokenizeRequest& r = *w.request;
  const storage::RecordStore& records = *deps_.records;
  auto answer = [&](Tokenized t, absl::string_view note) {
    entry.event = w.event;
    entry.event.set_token(t.token);
    if (!note.empty()) {
      entry.event.set_detail(absl::StrCat(w.event.detail(), " ", note));
    }
    SetOutcome(absl::OkStatus(), &entry.event);
    w.answer = std::move(t);
  };
  // An idempotent retry returns the first result as it was.
  std::optional<std::string> idempotency_seen;
  if (!w.idempotency_key.empty()) {
    absl::StatusOr<std::string> v =
        records.Get(storage::Table::kIdempotency, w.idempotency_key);
    if (!v.ok() && !absl::IsNotFound(v.status())) {
      return refuse(absl::UnavailableError("storage unavailable"));
    }
    if (v.ok()) {
      absl::StatusOr<IdempotencyEntry> first = DecodeIdempotencyEntry(*v);
      if (first.ok() && first->expires > w.now) {
        if (first->request_digest.size() != w.request_digest.size() ||
            CRYPTO_memcmp(first->request_digest.data(), w.request_digest.data(),
                          w.request_digest.size()) != 0) {
          return refuse(absl::InvalidArgumentError(
              "idempotency_key was already used for a different request"));
        }
        // A retry carrying another CVV than the one still held is another
        // request; one carrying the same (or none held any more) changes
        // nothing.
        if (!r.cvv.empty() &&
            deps_.cvv_cache->Compare(first->token, r.cvv, w.now) ==
                CvvCache::Held::kDifferent) {
          return refuse(absl::InvalidArgumentError(
              "idempotency_key was already used for a different request"));
        }
        w.hold_cvv = false;
        absl::Time expires = absl::InfiniteFuture();
        if (absl::StatusOr<std::string> rec =
                records.Get(storage::Table::kTokens, first->token);
            rec.ok()) {
          if (auto h = ParseRecordHeader(*rec); h.ok()) expires = h->expires;
        }
        answer(Tokenized{first->token, first->domain, false, expires},
               "idempotent-replay");
        return entry;
      }
      idempotency_seen = *std::move(v);
    }
  }
  auto remember_idempotency = [&](const Tokenized& t) {
    if (w.idempotency_key.empty()) return;
    entry.mutation.conditions.push_back(
        {storage::Table::kIdempotency, w.idempotency_key, idempotency_seen});
    entry.mutation.writes.push_back(
        {storage::Table::kIdempotency, w.idempotency_key,
         EncodeIdempotencyEntry({w.request_digest, t.domain, t.token,
                                 w.now + options_.idempotency_window})});
  };
  // A deterministic request returns the live token of this PAN, if any.
  std::optional<std::string> index_seen;
  if (w.deterministic) {
    absl::StatusOr<std::string> v =
        records.Get(storage::Table::kPanIndex, w.index_key);
    if (!v.ok() && !absl::IsNotFound(v.status())) {
      return refuse(absl::UnavailableError("storage unavailable"));
    }
    if (v.ok()) {
      absl::StatusOr<IndexEntry> existing = DecodeIndexEntry(*v);
      if (existing.ok() && existing->expires > w.now) {
        // Re-checked at write time, so that a concurrent delete wins.
        entry.mutation.conditions.push_back(
            {storage::Table::kPanIndex, w.index_key, *v});
        Tokenized t{existing->token, w.domain, false, existing->expires};
        remember_idempotency(t);
        NameCvvHolder(w, t.token, &entry.mutation);
        // The newest CVV for a card replaces one still held; said so.
        const bool replaces_cvv =
            !r.cvv.empty() &&
            deps_.cvv_cache->Compare(existing->token, r.cvv, w.now) !=
                CvvCache::Held::kNone;
        answer(std::move(t),
               replaces_cvv ? "existing-token cvv-replaced" : "existing-token");
        return entry;
      }
      index_seen = *std::move(v);  // expired: replaced below
    }
  }
  // The primary data key is replaced once it has sealed its share.
  if (deps_.keys->PrimaryDue()) server_events_.RotateDueDataKey();
  // A new token: drawn until one is free, within the format's bound.
  const bool numeric = r.format != TokenFormat::kRandom;
  const int max_draws = numeric ? options_.max_numeric_token_attempts
                                : options_.max_token_attempts;
  std::string token;
  while (true) {
    if (w.tokens_drawn >= max_draws) {
      return refuse(
          numeric ? absl::ResourceExhaustedError(
                        "no free token of this format for this "
                        "card; use another format")
                  : absl::InternalError("could not allocate a unique token"));
    }
    ++w.tokens_drawn;
    absl::StatusOr<std::string> drawn =
        numeric ? options_.generate_numeric_token(r.format, r.card.pan.view(),
                                                  w.bin_digits)
                : options_.generate_token();
    if (!drawn.ok()) return refuse(drawn.status());
    // A random token (130 bits) is not looked up here: condition 0 below
    // checks it at write time, and a collision is planned again with a fresh
    // draw. Numeric formats have small spaces, so they look before writing.
    if (!numeric) {
      token = *std::move(drawn);
      break;
    }
    absl::StatusOr<std::string> taken =
        records.Get(storage::Table::kTokens, *drawn);
    if (absl::IsNotFound(taken.status())) {
      token = *std::move(drawn);
      break;
    }
    if (!taken.ok())
      return refuse(absl::UnavailableError("storage unavailable"));
  }
  // Held until the record is written or abandoned: the key cannot be
  // destroyed under this write.
  absl::StatusOr<KeyRing::Lease> lease = deps_.keys->LeasePrimary();
  if (!lease.ok()) return refuse(lease.status());
  w.lease.emplace(*std::move(lease));
  RecordHeader header;
  header.key_version = w.lease->version();
  header.format = r.format;
  header.deterministic = w.deterministic;
  header.created = absl::FromUnixMillis(absl::ToUnixMillis(w.now));
  header.expires = w.expires;
  header.domain = w.domain;
  absl::StatusOr<std::string> record =
      SealCardRecord(w.lease->key(), header, token, r.card);
  if (!record.ok()) return refuse(record.status());
  // Condition 0: the token is still free when the write is made.
  entry.mutation.conditions.push_back(
      {storage::Table::kTokens, token, std::nullopt});
  entry.mutation.writes.push_back(
      {storage::Table::kTokens, token, *std::move(record)});
  entry.mutation.counter_adds.push_back(
      {EncryptionsCounterId(header.key_version), 1});
  entry.mutation.counter_adds.push_back(
      {NewRecordsCounterId(header.key_version), 1});
  if (w.deterministic) {
    entry.mutation.conditions.push_back(
        {storage::Table::kPanIndex, w.index_key, index_seen});
    entry.mutation.writes.push_back({storage::Table::kPanIndex, w.index_key,
                                     EncodeIndexEntry({token, w.expires})});
  }
  Tokenized t{token, w.domain, true, w.expires};
  remember_idempotency(t);
  NameCvvHolder(w, token, &entry.mutation);
  answer(std::move(t), "");
  return entry;
}

// One Tokenize or TokenizeBatch call across its planning rounds. Items point
// into `requests`, so a call stays where it was made until it finishes.
struct Vault::TokenizeCall {
  std::vector<TokenizeRequest> requests;
  std::vector<TokenizeWork> work;
  absl::Time now;
  int round = 0;
  // The items of the round being written, in the order of its entries.
  std::vector<TokenizeWork*> planned;
  // A batch call's event, which lists its items (single calls: none).
  std::optional<audit::AuditEvent> batch_event;
  Done<std::vector<absl::StatusOr<Tokenized>>> done;
};

void Vault::TokenizeAll(
    const auth::Caller& caller, std::vector<TokenizeRequest> requests,
    absl::string_view rpc,
    Done<std::vector<absl::StatusOr<Tokenized>>> done) const {
  auto call = std::make_unique<TokenizeCall>();
  call->requests = std::move(requests);
  call->now = options_.now();
  call->done = std::move(done);
  const std::shared_ptr<const auth::AccessPolicy> policy =
      deps_.policy->Current();
  // Authorise before looking at the data, so an unauthorised caller learns
  // nothing about validation.
  const absl::Status allowed =
      policy->Check(caller, auth::Permission::kTokenize);
  call->batch_event = BatchEvent(*policy, caller, v1::TOKENIZE, rpc);
  call->work.resize(call->requests.size());
  for (size_t i = 0; i < call->requests.size(); ++i) {
    TokenizeWork& w = call->work[i];
    w.request = &call->requests[i];
    w.now = call->now;
    if (!call->batch_event.has_value()) {
      w.event = recorder_.NewEvent(*policy, caller, v1::TOKENIZE, rpc);
    }
    if (!allowed.ok()) {
      w.refusal = allowed;
    } else {
      CheckTokenizeRequest(*policy, caller, w);
    }
  }
  TokenizeRound(std::move(call));
}

void Vault::TokenizeRound(std::unique_ptr<TokenizeCall> call) const {
  const bool last_round = call->round == TokenizeRounds(options_) - 1;
  std::vector<commit::Entry> entries;
  call->planned.clear();
  for (size_t i = 0; i < call->work.size(); ++i) {
    TokenizeWork& w = call->work[i];
    if (w.result.has_value()) continue;
    entries.push_back(PlanTokenize(w, last_round));
    entries.back().batch_index = static_cast<uint32_t>(i);
    call->planned.push_back(&w);
  }
  std::optional<audit::AuditEvent> batch_event = call->batch_event;
  deps_.audit->AppendAsync(std::move(batch_event), std::move(entries),
                           [this, call = std::move(call)](
                               std::vector<commit::Entry>& written) mutable {
                             TokenizeWritten(std::move(call), written);
                           });
}

void Vault::TokenizeWritten(std::unique_ptr<TokenizeCall> call,
                            std::vector<commit::Entry>& entries) const {
  bool replan = false;
  for (size_t i = 0; i < call->planned.size(); ++i) {
    TokenizeWork& w = *call->planned[i];
    const absl::Status& written = entries[i].result;
    if (absl::IsAborted(written)) {
      replan = true;
    } else if (!written.ok()) {
      w.result = absl::UnavailableError("storage or audit trail unavailable");
    } else if (w.refusal.has_value()) {
      w.result = *w.refusal;
    } else {
      if (w.hold_cvv && !w.request->cvv.empty()) {
        if (absl::Status s = deps_.cvv_cache->Put(w.answer->token,
                                                  w.request->cvv, call->now);
            !s.ok()) {
          util::LogWarning(absl::StrCat("CVV not held: ", s.message()));
        }
      }
      w.result = *std::move(w.answer);
    }
  }
  ++call->round;
  if (replan && call->round < TokenizeRounds(options_)) {
    // Refused only once the vault is being destroyed, which no call in
    // flight may see.
    (void)replanner_->Schedule([this, call = std::move(call)]() mutable {
      TokenizeRound(std::move(call));
    });
    return;
  }
  std::vector<absl::StatusOr<Tokenized>> results;
  results.reserve(call->work.size());
  for (TokenizeWork& w : call->work) {
    // The last round refuses what is left, so every item has its result.
    results.push_back(
        w.result.has_value()
            ? *std::move(w.result)
            : absl::AbortedError("conflicting concurrent requests; retry"));
  }
  Done<std::vector<absl::StatusOr<Tokenized>>> done = std::move(call->done);
  call.reset();  // the data-key leases end with the writes
  std::move(done)(std::move(results));
}

absl::StatusOr<OpenedCard> Vault::OpenRecord(absl::string_view token,
                                             std::string* record_out) const {
  absl::StatusOr<std::string> record =
      deps_.records->Get(storage::Table::kTokens, token);
  if (absl::IsNotFound(record.status())) {
    return absl::NotFoundError("token not found");
  }
  if (!record.ok()) return absl::UnavailableError("storage unavailable");
  absl::StatusOr<OpenedCard> opened =
      OpenCardRecord(*deps_.keys, token, *record);
  if (!opened.ok()) return opened.status();
  if (record_out != nullptr) *record_out = *std::move(record);
  return opened;
}

// One Detokenize item: its audit event and what it found.
struct Vault::DetokenizeWork {
  audit::AuditEvent event;
  std::optional<absl::Status> refusal;
  std::optional<OpenedCard> opened;
  // The node that holds this token's CVV, when another than this one.
  std::string cvv_holder;
};

// One Detokenize or DetokenizeBatch call waiting for its audit records.
struct Vault::DetokenizeCall {
  std::vector<DetokenizeRequest> requests;
  // The policy the call was checked under (it also says who gets a CVV).
  std::shared_ptr<const auth::AccessPolicy> policy;
  std::vector<DetokenizeWork> work;
  absl::Time now;
  Done<std::vector<absl::StatusOr<Detokenized>>> done;
};

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
  std::vector<DetokenizeRequest> one;
  one.push_back(std::move(request));
  DetokenizeAll(caller, std::move(one), kDetokenizeRpc,
                [done = std::move(done)](
                    std::vector<absl::StatusOr<Detokenized>> results) mutable {
                  std::move(done)(std::move(results[0]));
                });
}

absl::StatusOr<std::vector<absl::StatusOr<Detokenized>>> Vault::DetokenizeBatch(
    const auth::Caller& caller,
    const std::vector<DetokenizeRequest>& requests) const {
  if (absl::Status s =
          CheckBatch(caller, auth::Permission::kDetokenize, requests.size());
      !s.ok()) {
    return recorder_.Record(
        recorder_.NewEvent(caller, v1::DETOKENIZE, kDetokenizeBatchRpc), s);
  }
  using Results = std::vector<absl::StatusOr<Detokenized>>;
  return Await<Results>([&](Done<Results> done) {
    DetokenizeAll(caller, requests, kDetokenizeBatchRpc, std::move(done));
  });
}

auth::RateLimiter::DayReserver Vault::MakeDayReserver(
    const Dependencies& deps) const {
  if (deps.day_reservations == nullptr) return nullptr;
  return [this, uses = deps.day_reservations, key = deps.index_key](
             absl::string_view identity, int64_t day, uint64_t wanted,
             uint64_t limit) -> absl::StatusOr<uint64_t> {
    absl::StatusOr<coordination::UseReservations::Grant> grant = uses->Reserve(
        VelocityReservationCounter(*key, day, identity), 1, wanted, limit);
    if (grant.ok()) return grant->granted;
    if (!absl::IsResourceExhausted(grant.status())) {
      // Names the counter (a keyed digest), never the identity.
      reservation_log_.Log(
          util::Severity::kError,
          absl::StrCat("cannot reserve Detokenize uses of a daily limit, "
                       "calls refused: ",
                       grant.status().ToString()));
    }
    return grant.status();
  };
}

absl::StatusOr<OpenedCard> Vault::FindForDetokenize(
    const auth::AccessPolicy& policy, const auth::Caller& caller,
    const DetokenizeRequest& r, absl::Time now, audit::AuditEvent* event,
    std::string* day_counter) const {
  if (absl::Status s = policy.CheckPurpose(r.purpose); !s.ok()) return s;
  if (!IsWellFormedToken(r.token)) {
    return absl::InvalidArgumentError("token is malformed");
  }
  // Every attempt counts against the limit, found or not: the control is
  // against bulk export, including by guessing.
  const auth::RateLimit limit = policy.DetokenizeLimit(caller);
  if (absl::Status s = limiter_.Admit(caller.identity, limit, now); !s.ok()) {
    // Anything but a limit reached: the daily uses could not be reserved
    // (logged by the reserver), and the call fails closed.
    if (!absl::IsResourceExhausted(s)) return s;
    ++velocity_denials_;
    util::LogWarning(absl::StrCat("ALERT velocity limit reached by ",
                                  caller.identity, " (",
                                  velocity_denials_.load(), " denials)"));
    return s;
  }
  // Written with the record, so that a restart resumes today's count.
  if (limit.per_day != 0) {
    *day_counter =
        auth::DayCounterId(absl::ToUnixSeconds(now) / 86400, caller.identity);
  }
  absl::StatusOr<OpenedCard> opened = OpenRecord(r.token);
  if (!opened.ok()) return opened.status();
  event->set_token(r.token);  // the vault holds it: a token, not a PAN
  event->set_domain(opened->header.domain);
  if (opened->header.expires <= now ||
      !policy.MayDetokenize(caller, opened->header.domain)) {
    // Recorded as what the caller saw; the domain shows why.
    return absl::NotFoundError("token not found");
  }
  return opened;
}

void Vault::DetokenizeAll(
    const auth::Caller& caller, std::vector<DetokenizeRequest> requests,
    absl::string_view rpc,
    Done<std::vector<absl::StatusOr<Detokenized>>> done) const {
  auto call = std::make_unique<DetokenizeCall>();
  call->requests = std::move(requests);
  call->now = options_.now();
  call->done = std::move(done);
  const std::shared_ptr<const auth::AccessPolicy> policy =
      deps_.policy->Current();
  call->policy = policy;
  const absl::Status allowed =
      policy->Check(caller, auth::Permission::kDetokenize);
  std::optional<audit::AuditEvent> batch_event =
      BatchEvent(*policy, caller, v1::DETOKENIZE, rpc);
  call->work.resize(call->requests.size());
  std::vector<commit::Entry> entries(call->requests.size());
  for (size_t i = 0; i < call->requests.size(); ++i) {
    DetokenizeWork& w = call->work[i];
    if (!batch_event.has_value()) {
      w.event = recorder_.NewEvent(*policy, caller, v1::DETOKENIZE, rpc);
    }
    entries[i].batch_index = static_cast<uint32_t>(i);
    RecordRequested(*policy, call->requests[i], &w.event);
    std::string day_counter;
    absl::StatusOr<OpenedCard> opened =
        allowed.ok() ? FindForDetokenize(*policy, caller, call->requests[i],
                                         call->now, &w.event, &day_counter)
                     : allowed;
    if (!day_counter.empty()) {
      entries[i].mutation.counter_adds.push_back({std::move(day_counter), 1});
    }
    if (opened.ok()) {
      w.opened = *std::move(opened);
      w.cvv_holder =
          RemoteCvvHolder(*policy, call->requests[i], call->now, &w.event);
    } else {
      w.refusal = opened.status();
    }
    entries[i].event = w.event;
    SetOutcome(w.refusal.value_or(absl::OkStatus()), &entries[i].event);
  }
  // Fail closed: no card data leaves unless its record is durable.
  deps_.audit->AppendAsync(
      std::move(batch_event), std::move(entries),
      [this,
       call = std::move(call)](std::vector<commit::Entry>& written) mutable {
        std::vector<absl::StatusOr<Detokenized>> results;
        results.reserve(call->work.size());
        std::vector<size_t> remote;
        for (size_t i = 0; i < call->work.size(); ++i) {
          DetokenizeWork& w = call->work[i];
          if (!written[i].result.ok()) {
            results.push_back(
                absl::UnavailableError("audit trail unavailable"));
          } else if (w.refusal.has_value()) {
            results.push_back(*w.refusal);
          } else {
            // A CVV leaves only for the purposes the policy marks.
            const DetokenizeRequest& r = call->requests[i];
            // When the store names another holder, a copy held here is an
            // older CVV, replaced there: dropped, never returned.
            const bool remote_holder = !w.cvv_holder.empty();
            if (remote_holder) deps_.cvv_cache->Erase(r.token);
            Detokenized out{
                std::move(w.opened->card), std::move(w.opened->header.domain),
                call->policy->ReleasesCvvFor(r.purpose) && !remote_holder
                    ? deps_.cvv_cache->Take(r.token, call->now)
                    : std::nullopt};
            if (remote_holder) remote.push_back(i);
            results.push_back(std::move(out));
          }
        }
        if (remote.empty()) {
          std::move(call->done)(std::move(results));
          return;
        }
        TakeRemoteCvvs(std::move(call), std::move(results), remote);
      });
}

std::string Vault::RemoteCvvHolder(const auth::AccessPolicy& policy,
                                   const DetokenizeRequest& r, absl::Time now,
                                   audit::AuditEvent* event) const {
  // The row, not this node's cache, says where the newest CVV is: a
  // Tokenize on another node may have replaced the one held here.
  if (deps_.cvv_peers == nullptr || !policy.ReleasesCvvFor(r.purpose)) {
    return "";
  }
  absl::StatusOr<std::string> row =
      deps_.records->Get(storage::Table::kShared, CvvHolderKey(r.token));
  if (!row.ok()) return "";  // none given, or unreadable: no CVV, as before
  absl::StatusOr<CvvHolder> holder = DecodeCvvHolder(*row);
  if (!holder.ok() || holder->expires <= now ||
      holder->address == options_.node_address) {
    return "";
  }
  event->set_detail(
      absl::StrCat(event->detail(), " cvv-asked-of ", holder->address));
  return holder->address;
}

void Vault::TakeRemoteCvvs(std::unique_ptr<DetokenizeCall> call,
                           std::vector<absl::StatusOr<Detokenized>> results,
                           const std::vector<size_t>& remote) const {
  // Each answer fills its own item; the last one finishes the call.
  struct Join {
    std::unique_ptr<DetokenizeCall> call;
    std::vector<absl::StatusOr<Detokenized>> results;
    std::atomic<size_t> left{0};
  };
  auto join = std::make_shared<Join>();
  join->call = std::move(call);
  join->results = std::move(results);
  join->left = remote.size();
  for (size_t i : remote) {
    const DetokenizeWork& w = join->call->work[i];
    deps_.cvv_peers->TakeHeldCvv(
        w.cvv_holder, join->call->requests[i].token,
        [this, join,
         i](absl::StatusOr<std::optional<crypto::SecretBytes>> cvv) mutable {
          if (cvv.ok() && cvv->has_value()) {
            join->results[i]->cvv = **std::move(cvv);
          } else if (!cvv.ok()) {
            // The card still leaves: a CVV another node could not give is
            // lost, as with that node's restart.
            peer_log_.Log(util::Severity::kWarning,
                          absl::StrCat("no CVV from node ",
                                       join->call->work[i].cvv_holder, ": ",
                                       cvv.status().ToString()),
                          /*library=*/true);
          }
          if (join->left.fetch_sub(1) == 1) {
            std::move(join->call->done)(std::move(join->results));
          }
        });
  }
}

absl::StatusOr<std::optional<crypto::SecretBytes>> Vault::ReleaseHeldCvv(
    const auth::Caller& caller, absl::string_view token) const {
  const std::shared_ptr<const auth::AccessPolicy> policy =
      deps_.policy->Current();
  audit::AuditEvent event =
      recorder_.NewEvent(*policy, caller, v1::CVV_RELEASE, kTakeHeldCvvRpc);
  if (absl::Status s = CheckTokenCall(
          *policy, caller, auth::Permission::kTakeHeldCvv, token, &event);
      !s.ok()) {
    return recorder_.Record(std::move(event), s);
  }
  const absl::Time now = options_.now();
  // Only the CVV of a token that still exists leaves: one deleted (on any
  // node) or expired is dropped here instead.
  absl::StatusOr<std::string> record =
      deps_.records->Get(storage::Table::kTokens, token);
  if (!record.ok() && !absl::IsNotFound(record.status())) {
    return recorder_.Record(std::move(event),
                            absl::UnavailableError("storage unavailable"));
  }
  bool live = record.ok();
  if (live) {
    absl::StatusOr<RecordHeader> header = ParseRecordHeader(*record);
    live = header.ok() && header->expires > now;
  }
  if (!live) deps_.cvv_cache->Erase(token);
  // Taken before the record is written, so that of concurrent callers only
  // the one that gets the CVV records a release; put back if the record
  // cannot be written (fail closed).
  std::optional<crypto::SecretBytes> cvv =
      live ? deps_.cvv_cache->Take(token, now) : std::nullopt;
  event.set_detail(cvv.has_value() ? "cvv released"
                   : live          ? "no cvv held"
                                   : "no such token: nothing released");
  SetOutcome(absl::OkStatus(), &event);
  // The row naming this node goes with the CVV, so no node asks again; only
  // while it still names this node (a later Tokenize may name another).
  commit::Mutation mutation;
  const std::string key = CvvHolderKey(token);
  absl::StatusOr<std::string> row =
      cvv.has_value() ? deps_.records->Get(storage::Table::kShared, key)
                      : absl::NotFoundError("no CVV released");
  if (row.ok()) {
    absl::StatusOr<CvvHolder> holder = DecodeCvvHolder(*row);
    if (holder.ok() && holder->address == options_.node_address) {
      mutation.conditions.push_back({storage::Table::kShared, key, *row});
      mutation.writes.push_back({storage::Table::kShared, key, std::nullopt});
    }
  }
  absl::Status written = deps_.audit->Append(event, mutation);
  if (absl::IsAborted(written)) {
    written = deps_.audit->Append(std::move(event), commit::Mutation());
  }
  if (!written.ok()) {
    if (cvv.has_value()) (void)deps_.cvv_cache->Put(token, *cvv, now);
    return absl::UnavailableError("storage or audit trail unavailable");
  }
  return cvv;
}

absl::Status Vault::CheckBatch(const auth::Caller& caller,
                               auth::Permission permission,
                               size_t items) const {
  // A caller without the role learns nothing about its items.
  if (absl::Status s = deps_.policy->Current()->Check(caller, permission);
      !s.ok()) {
    return s;
  }
  if (items == 0 || items > options_.max_batch_items) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a batch holds 1 to ", options_.max_batch_items, " requests"));
  }
  return absl::OkStatus();
}

absl::Status Vault::CheckTokenCall(const auth::AccessPolicy& policy,
                                   const auth::Caller& caller,
                                   auth::Permission permission,
                                   absl::string_view token,
                                   audit::AuditEvent* event) const {
  const bool well_formed = IsWellFormedToken(token);
  event->set_token(recorder_.RecordedToken(token, false));
  // Authorise before looking at the token, so an unauthorised caller
  // learns nothing about it.
  if (absl::Status s = policy.Check(caller, permission); !s.ok()) return s;
  if (!well_formed) return absl::InvalidArgumentError("token is malformed");
  return absl::OkStatus();
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
  const std::shared_ptr<const auth::AccessPolicy> policy =
      deps_.policy->Current();
  audit::AuditEvent event =
      recorder_.NewEvent(*policy, caller, v1::TOKEN_INFO, kGetTokenInfoRpc);
  // A refusal: recorded, then answered.
  auto refuse = [&](absl::Status status) {
    recorder_.RecordAsync(std::move(event), std::move(status),
                          [done = std::move(done)](absl::Status s) mutable {
                            std::move(done)(std::move(s));
                          });
  };
  if (absl::Status s = CheckTokenCall(
          *policy, caller, auth::Permission::kReadTokenInfo, token, &event);
      !s.ok()) {
    return refuse(std::move(s));
  }
  absl::StatusOr<OpenedCard> opened = OpenRecord(token);
  if (!opened.ok()) return refuse(opened.status());
  event.set_token(std::string(token));
  const RecordHeader& h = opened->header;
  event.set_domain(h.domain);
  if (h.expires <= options_.now() ||
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
  info.fingerprint = Fingerprint(*deps_.fingerprint_key, h.domain, pan);
  info.deterministic = h.deterministic;
  recorder_.RecordAsync(
      std::move(event), absl::OkStatus(),
      [info = std::move(info), done = std::move(done)](absl::Status s) mutable {
        if (s.ok()) {
          std::move(done)(std::move(info));
        } else {
          std::move(done)(std::move(s));
        }
      });
}

absl::StatusOr<bool> Vault::DeleteToken(const auth::Caller& caller,
                                        absl::string_view token) const {
  const std::shared_ptr<const auth::AccessPolicy> policy =
      deps_.policy->Current();
  audit::AuditEvent event =
      recorder_.NewEvent(*policy, caller, v1::DELETE_TOKEN, kDeleteTokenRpc);
  if (absl::Status s = CheckTokenCall(
          *policy, caller, auth::Permission::kDeleteToken, token, &event);
      !s.ok()) {
    return recorder_.Record(std::move(event), s);
  }
  // A concurrent change of the record or its index entry makes the write
  // condition fail; the delete is then planned again on fresh reads.
  for (int attempt = 0; attempt < options_.max_token_attempts; ++attempt) {
    std::string record;
    absl::StatusOr<OpenedCard> opened = OpenRecord(token, &record);
    if (absl::IsNotFound(opened.status())) {
      event.set_detail("nothing to delete");
      if (absl::Status s = recorder_.Record(event, absl::OkStatus()); !s.ok())
        return s;
      return false;
    }
    if (!opened.ok())
      return recorder_.Record(std::move(event), opened.status());
    event.set_token(std::string(token));
    const RecordHeader& h = opened->header;
    event.set_domain(h.domain);
    if (!policy->MayDeleteToken(caller, h.domain)) {
      // Same answer as for an absent token: existence does not leak.
      event.set_detail("nothing of the caller's to delete");
      if (absl::Status s = recorder_.Record(event, absl::OkStatus()); !s.ok())
        return s;
      return false;
    }
    commit::Mutation mutation;
    mutation.conditions.push_back(
        {storage::Table::kTokens, std::string(token), record});
    mutation.writes.push_back(
        {storage::Table::kTokens, std::string(token), std::nullopt});
    if (h.deterministic) {
      const std::string key = PanIndexKey(*deps_.index_key, h.domain, h.format,
                                          opened->card.pan.view());
      absl::StatusOr<std::string> v =
          deps_.records->Get(storage::Table::kPanIndex, key);
      if (!v.ok() && !absl::IsNotFound(v.status())) {
        return recorder_.Record(std::move(event),
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
    if (deps_.cvv_peers != nullptr) {
      // No other node asks the holder for this token's CVV any more.
      mutation.writes.push_back(
          {storage::Table::kShared, CvvHolderKey(token), std::nullopt});
    }
    audit::AuditEvent done = event;
    done.set_detail("deleted record and index entries");
    SetOutcome(absl::OkStatus(), &done);
    absl::Status written = deps_.audit->Append(std::move(done), mutation);
    if (absl::IsAborted(written)) continue;
    if (!written.ok()) {
      return absl::UnavailableError("storage or audit trail unavailable");
    }
    deps_.cvv_cache->Erase(token);
    return true;
  }
  return recorder_.Record(
      std::move(event),
      absl::AbortedError("conflicting concurrent requests; retry"));
}

void Vault::RecordRejectedAsync(const auth::Caller& caller, EventType type,
                                absl::string_view rpc,
                                const absl::Status& status) const {
  recorder_.RecordAsync(recorder_.NewEvent(caller, type, rpc), status,
                        [](absl::Status) {});
}

void Vault::RecordRequested(const auth::AccessPolicy& policy,
                            const DetokenizeRequest& r,
                            audit::AuditEvent* event) const {
  const audit::ValueMarker& marker = deps_.audit->marker();
  event->set_token(recorder_.RecordedToken(r.token, false));
  event->set_purpose(
      marker.Recorded(r.purpose, policy.KnowsPurpose(r.purpose)));
}

absl::Status Vault::RecordRejected(const auth::Caller& caller, EventType type,
                                   absl::string_view rpc,
                                   const absl::Status& status) const {
  return recorder_.Record(recorder_.NewEvent(caller, type, rpc), status);
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
