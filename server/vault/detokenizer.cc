#include "server/vault/detokenizer.h"

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/util/log.h"
#include "server/vault/audit_event.h"
#include "server/vault/cvv_holders.h"
#include "server/vault/token.h"
#include "server/vault/velocity_reservations.h"

namespace cardvault::vault {

// One Detokenize item: its audit event and what it found.
struct Detokenizer::DetokenizeWork {
  audit::AuditEvent event;
  std::optional<absl::Status> refusal;
  std::optional<OpenedCard> opened;
  // The node that holds this token's CVV, when another than this one.
  std::string cvv_holder;
};

// One Detokenize or DetokenizeBatch call waiting for its audit records.
struct Detokenizer::DetokenizeCall {
  std::vector<DetokenizeRequest> requests;
  // The policy the call was checked under (it also says who gets a CVV).
  std::shared_ptr<const auth::AccessPolicy> policy;
  std::vector<DetokenizeWork> work;
  absl::Time now;
  Done<std::vector<absl::StatusOr<Detokenized>>> done;
};

void Detokenizer::DetokenizeAsync(
    const auth::Caller& caller, DetokenizeRequest request,
    Done<absl::StatusOr<Detokenized>> done) const {
  DetokenizeAll(caller, BatchOfOne(std::move(request)), kDetokenizeRpc,
                FirstResult(std::move(done)));
}

absl::StatusOr<std::vector<absl::StatusOr<Detokenized>>>
Detokenizer::DetokenizeBatch(
    const auth::Caller& caller,
    const std::vector<DetokenizeRequest>& requests) const {
  if (absl::Status s = calls_->CheckBatch(caller, auth::Permission::kDetokenize,
                                          v1::DETOKENIZE, kDetokenizeBatchRpc,
                                          requests.size());
      !s.ok()) {
    return s;
  }
  using Results = std::vector<absl::StatusOr<Detokenized>>;
  return Await<Results>([&](Done<Results> done) {
    DetokenizeAll(caller, requests, kDetokenizeBatchRpc, std::move(done));
  });
}

auth::RateLimiter::DayReserver Detokenizer::MakeDayReserver(
    const VaultDependencies& deps) const {
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

void Detokenizer::RecordRequested(const auth::AccessPolicy& policy,
                                  const DetokenizeRequest& r,
                                  audit::AuditEvent* event) const {
  const audit::ValueMarker& marker = calls_->deps().audit->marker();
  event->set_token(calls_->recorder().RecordedToken(r.token, false));
  event->set_purpose(
      marker.Recorded(r.purpose, policy.KnowsPurpose(r.purpose)));
}

absl::StatusOr<OpenedCard> Detokenizer::FindForDetokenize(
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
  absl::StatusOr<OpenedCard> opened = calls_->OpenRecord(r.token);
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

void Detokenizer::DetokenizeAll(
    const auth::Caller& caller, std::vector<DetokenizeRequest> requests,
    absl::string_view rpc,
    Done<std::vector<absl::StatusOr<Detokenized>>> done) const {
  const VaultDependencies& deps = calls_->deps();
  auto call = std::make_unique<DetokenizeCall>();
  call->requests = std::move(requests);
  call->now = calls_->options().now();
  call->done = std::move(done);
  const std::shared_ptr<const auth::AccessPolicy> policy =
      deps.policy->Current();
  call->policy = policy;
  const absl::Status allowed =
      policy->Check(caller, auth::Permission::kDetokenize);
  std::optional<audit::AuditEvent> batch_event =
      calls_->BatchEvent(*policy, caller, v1::DETOKENIZE, rpc);
  call->work.resize(call->requests.size());
  std::vector<commit::Entry> entries(call->requests.size());
  for (size_t i = 0; i < call->requests.size(); ++i) {
    DetokenizeWork& w = call->work[i];
    if (!batch_event.has_value()) {
      w.event =
          calls_->recorder().NewEvent(*policy, caller, v1::DETOKENIZE, rpc);
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
  deps.audit->AppendAsync(
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
            if (remote_holder) calls_->deps().cvv_cache->Erase(r.token);
            Detokenized out{
                std::move(w.opened->card), std::move(w.opened->header.domain),
                call->policy->ReleasesCvvFor(r.purpose) && !remote_holder
                    ? calls_->deps().cvv_cache->Take(r.token, call->now)
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

std::string Detokenizer::RemoteCvvHolder(const auth::AccessPolicy& policy,
                                         const DetokenizeRequest& r,
                                         absl::Time now,
                                         audit::AuditEvent* event) const {
  const VaultDependencies& deps = calls_->deps();
  // The row, not this node's cache, says where the newest CVV is: a
  // Tokenize on another node may have replaced the one held here.
  if (deps.cvv_peers == nullptr || !policy.ReleasesCvvFor(r.purpose)) {
    return "";
  }
  absl::StatusOr<std::string> row =
      deps.records->Get(storage::Table::kShared, CvvHolderKey(r.token));
  if (!row.ok()) return "";  // none given, or unreadable: no CVV, as before
  absl::StatusOr<CvvHolder> holder = DecodeCvvHolder(*row);
  if (!holder.ok() || holder->expires <= now ||
      holder->address == calls_->options().node_address) {
    return "";
  }
  event->set_detail(
      absl::StrCat(event->detail(), " cvv-asked-of ", holder->address));
  return holder->address;
}

void Detokenizer::TakeRemoteCvvs(
    std::unique_ptr<DetokenizeCall> call,
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
    calls_->deps().cvv_peers->TakeHeldCvv(
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

}  // namespace cardvault::vault
