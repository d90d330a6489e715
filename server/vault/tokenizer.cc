#include "server/vault/tokenizer.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/util/big_endian.h"
#include "server/util/log.h"
#include "server/vault/audit_event.h"
#include "server/vault/card_record.h"
#include "server/vault/cvv_holders.h"
#include "server/vault/index_entry.h"
#include "server/vault/token.h"
#include "server/vault/vault_options.h"

namespace cardvault::vault {
namespace {

// Every item is planned and written in one write; only items whose write
// condition lost a race (token drawn twice, index or idempotency entry
// written concurrently) are planned again, at most this many rounds.
int TokenizeRounds(const VaultOptions& options) {
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

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Create(
    const TokenCalls* calls, const ServerEvents* server_events) {
  // Unbounded: what waits there is calls already admitted.
  absl::StatusOr<std::unique_ptr<util::BlockingExecutor>> replanner =
      util::BlockingExecutor::Create(
          {.threads = 1, .max_queued = std::numeric_limits<size_t>::max()});
  if (!replanner.ok()) return replanner.status();
  return std::unique_ptr<Tokenizer>(
      new Tokenizer(calls, server_events, *std::move(replanner)));
}

// One Tokenize item on its way through one or more planning rounds.
struct Tokenizer::TokenizeWork {
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

void Tokenizer::TokenizeAsync(const auth::Caller& caller,
                              TokenizeRequest request,
                              Done<absl::StatusOr<Tokenized>> done) const {
  TokenizeAll(caller, BatchOfOne(std::move(request)), kTokenizeRpc,
              FirstResult(std::move(done)));
}

absl::StatusOr<std::vector<absl::StatusOr<Tokenized>>> Tokenizer::TokenizeBatch(
    const auth::Caller& caller, std::vector<TokenizeRequest> requests) const {
  if (absl::Status s =
          calls_->CheckBatch(caller, auth::Permission::kTokenize, v1::TOKENIZE,
                             kTokenizeBatchRpc, requests.size());
      !s.ok()) {
    return s;
  }
  using Results = std::vector<absl::StatusOr<Tokenized>>;
  return Await<Results>([&](Done<Results> done) {
    TokenizeAll(caller, std::move(requests), kTokenizeBatchRpc,
                std::move(done));
  });
}

void Tokenizer::CheckTokenizeRequest(const auth::AccessPolicy& policy,
                                     const auth::Caller& caller,
                                     TokenizeWork& w) const {
  const VaultDependencies& deps = calls_->deps();
  const TokenizeRequest& r = *w.request;
  w.event.set_domain(
      deps.audit->marker().Recorded(r.domain, policy.KnowsDomain(r.domain)));
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
    w.index_key = PanIndexKey(*deps.index_key, w.domain, r.format, pan);
  }
  if (!r.idempotency_key.empty()) {
    w.idempotency_key =
        IdempotencyKey(*deps.index_key, caller.identity, r.idempotency_key);
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
    w.request_digest = deps.index_key->ComputeSecret(
        {"cardvault/idempotency-request", domain_len, w.domain, fixed, pan_len,
         pan, r.card.cardholder_name.view()});
  }
}

void Tokenizer::NameCvvHolder(const TokenizeWork& w, absl::string_view token,
                              commit::Mutation* mutation) const {
  const VaultDependencies& deps = calls_->deps();
  if (deps.cvv_peers == nullptr || w.request->cvv.empty()) return;
  // The address was checked at Create, so the row always encodes.
  absl::StatusOr<std::string> row =
      EncodeCvvHolder({.expires = w.now + deps.cvv_cache->ttl(),
                       .address = calls_->options().node_address});
  if (!row.ok()) return;
  mutation->writes.push_back(
      {storage::Table::kShared, CvvHolderKey(token), *std::move(row)});
}

commit::Entry Tokenizer::PlanTokenize(TokenizeWork& w, bool last_round) const {
  const VaultDependencies& deps = calls_->deps();
  const VaultOptions& options = calls_->options();
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
  const storage::RecordStore& records = *deps.records;
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
            deps.cvv_cache->Compare(first->token, r.cvv, w.now) ==
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
                                 w.now + options.idempotency_window})});
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
            deps.cvv_cache->Compare(existing->token, r.cvv, w.now) !=
                CvvCache::Held::kNone;
        answer(std::move(t),
               replaces_cvv ? "existing-token cvv-replaced" : "existing-token");
        return entry;
      }
      index_seen = *std::move(v);  // expired: replaced below
    }
  }
  // The primary data key is replaced once it has sealed its share.
  if (deps.keys->PrimaryDue()) server_events_->RotateDueDataKey();
  // A new token: drawn until one is free, within the format's bound.
  const bool numeric = r.format != TokenFormat::kRandom;
  const int max_draws =
      numeric ? options.max_numeric_token_attempts : options.max_token_attempts;
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
        numeric ? options.generate_numeric_token(r.format, r.card.pan.view(),
                                                 w.bin_digits)
                : options.generate_token();
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
  absl::StatusOr<KeyRing::Lease> lease = deps.keys->LeasePrimary();
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
struct Tokenizer::TokenizeCall {
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

void Tokenizer::TokenizeAll(
    const auth::Caller& caller, std::vector<TokenizeRequest> requests,
    absl::string_view rpc,
    Done<std::vector<absl::StatusOr<Tokenized>>> done) const {
  auto call = std::make_unique<TokenizeCall>();
  call->requests = std::move(requests);
  call->now = calls_->options().now();
  call->done = std::move(done);
  const std::shared_ptr<const auth::AccessPolicy> policy =
      calls_->deps().policy->Current();
  // Authorise before looking at the data, so an unauthorised caller learns
  // nothing about validation.
  const absl::Status allowed =
      policy->Check(caller, auth::Permission::kTokenize);
  call->batch_event = calls_->BatchEvent(*policy, caller, v1::TOKENIZE, rpc);
  call->work.resize(call->requests.size());
  for (size_t i = 0; i < call->requests.size(); ++i) {
    TokenizeWork& w = call->work[i];
    w.request = &call->requests[i];
    w.now = call->now;
    if (!call->batch_event.has_value()) {
      w.event = calls_->recorder().NewEvent(*policy, caller, v1::TOKENIZE, rpc);
    }
    if (!allowed.ok()) {
      w.refusal = allowed;
    } else {
      CheckTokenizeRequest(*policy, caller, w);
    }
  }
  TokenizeRound(std::move(call));
}

void Tokenizer::TokenizeRound(std::unique_ptr<TokenizeCall> call) const {
  const bool last_round = call->round == TokenizeRounds(calls_->options()) - 1;
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
  calls_->deps().audit->AppendAsync(
      std::move(batch_event), std::move(entries),
      [this,
       call = std::move(call)](std::vector<commit::Entry>& written) mutable {
        TokenizeWritten(std::move(call), written);
      });
}

void Tokenizer::TokenizeWritten(std::unique_ptr<TokenizeCall> call,
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
        if (absl::Status s = calls_->deps().cvv_cache->Put(
                w.answer->token, w.request->cvv, call->now);
            !s.ok()) {
          util::LogWarning(absl::StrCat("CVV not held: ", s.message()));
        }
      }
      w.result = *std::move(w.answer);
    }
  }
  ++call->round;
  if (replan && call->round < TokenizeRounds(calls_->options())) {
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

}  // namespace cardvault::vault
