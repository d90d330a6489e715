#include "server/service/token_vault_service.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/service/caller_context.h"
#include "server/service/request_checks.h"
#include "server/service/status_conversion.h"
#include "server/util/log.h"

namespace cardvault::service {
namespace {

namespace pb = ::cardvault::v1;

constexpr double kRefusalLinesPerSecond = 20;

vault::TokenFormat FormatFromProto(pb::TokenFormat format) {
  switch (format) {
    case pb::TOKEN_FORMAT_UNSPECIFIED:
    case pb::RANDOM:
      return vault::TokenFormat::kRandom;
    case pb::LAST_FOUR:
      return vault::TokenFormat::kLastFour;
    case pb::BIN_LAST_FOUR:
      return vault::TokenFormat::kBinLastFour;
    default:
      return static_cast<vault::TokenFormat>(0);  // refused by the vault
  }
}

pb::TokenFormat FormatToProto(vault::TokenFormat format) {
  switch (format) {
    case vault::TokenFormat::kRandom:
      return pb::RANDOM;
    case vault::TokenFormat::kLastFour:
      return pb::LAST_FOUR;
    case vault::TokenFormat::kBinLastFour:
      return pb::BIN_LAST_FOUR;
  }
  return pb::TOKEN_FORMAT_UNSPECIFIED;
}

pb::CardBrand BrandToProto(vault::CardBrand brand) {
  switch (brand) {
    case vault::CardBrand::kVisa:
      return pb::VISA;
    case vault::CardBrand::kMastercard:
      return pb::MASTERCARD;
    case vault::CardBrand::kAmex:
      return pb::AMEX;
    case vault::CardBrand::kDiscover:
      return pb::DISCOVER;
    case vault::CardBrand::kJcb:
      return pb::JCB;
    case vault::CardBrand::kDinersClub:
      return pb::DINERS_CLUB;
    case vault::CardBrand::kUnionPay:
      return pb::UNIONPAY;
    case vault::CardBrand::kMaestro:
      return pb::MAESTRO;
    case vault::CardBrand::kUnknown:
      return pb::CARD_BRAND_UNKNOWN;
  }
  return pb::CARD_BRAND_UNKNOWN;
}

void SetTime(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t ms = absl::ToUnixMillis(t);
  out->set_seconds(ms / 1000);
  out->set_nanos(static_cast<int32_t>((ms % 1000) * 1000000));
}

vault::TokenizeRequest FromProto(const pb::TokenizeRequest& r) {
  vault::TokenizeRequest out;
  out.card.pan = crypto::SecretBytes(r.card().pan());
  out.card.exp_month = r.card().exp_month();
  out.card.exp_year = r.card().exp_year();
  out.card.cardholder_name = crypto::SecretBytes(r.card().cardholder_name());
  out.domain = r.domain();
  out.format = FormatFromProto(r.format());
  out.deterministic = r.deterministic();
  // A Duration that is not valid at all is beyond every TTL bound, so the
  // vault refuses and records it as a bad TTL.
  out.ttl =
      DurationFromProto(r.ttl(), "ttl").value_or(absl::InfiniteDuration());
  out.idempotency_key = r.idempotency_key();
  out.cvv = crypto::SecretBytes(r.cvv());
  return out;
}

void ToProto(const vault::Tokenized& t, pb::TokenizeResponse* out) {
  out->set_token(t.token);
  out->set_domain(t.domain);
  out->set_created(t.created);
  if (t.expires != absl::InfiniteFuture()) {
    SetTime(t.expires, out->mutable_expire_time());
  }
}

void ToProto(const vault::Detokenized& d, pb::DetokenizeResponse* out) {
  pb::Card* card = out->mutable_card();
  card->set_pan(std::string(d.card.pan.view()));
  card->set_exp_month(d.card.exp_month);
  card->set_exp_year(d.card.exp_year);
  card->set_cardholder_name(std::string(d.card.cardholder_name.view()));
  out->set_domain(d.domain);
  if (d.cvv.has_value()) out->set_cvv(std::string(d.cvv->view()));
}

void ToProto(const vault::TokenInfo& info, pb::TokenInfo* out) {
  out->set_token(info.token);
  out->set_brand(BrandToProto(info.brand));
  out->set_bin(info.bin);
  out->set_last_four(info.last_four);
  out->set_exp_month(info.exp_month);
  out->set_exp_year(info.exp_year);
  out->set_format(FormatToProto(info.format));
  out->set_domain(info.domain);
  SetTime(info.created, out->mutable_create_time());
  if (info.expires != absl::InfiniteFuture()) {
    SetTime(info.expires, out->mutable_expire_time());
  }
  out->set_fingerprint(info.fingerprint);
  out->set_deterministic(info.deterministic);
}

void ToProto(const absl::Status& status, pb::ItemStatus* out) {
  const grpc::Status g = ToGrpcStatus(status);
  out->set_code(static_cast<int32_t>(g.error_code()));
  out->set_message(g.error_message());
}

// One result per item, in order: its status and, when OK, its response.
template <typename Item, typename Response>
void AddResults(const std::vector<absl::StatusOr<Item>>& results,
                Response* response) {
  for (const absl::StatusOr<Item>& r : results) {
    auto* out = response->add_results();
    ToProto(r.status(), out->mutable_status());
    if (r.ok()) ToProto(*r, out->mutable_response());
  }
}

// Logs what an operator needs (RPC, caller as the audit trail records it,
// code) and never the request.
grpc::Status Finish(const vault::Vault& vault, absl::string_view rpc,
                    const auth::Caller* caller, const absl::Status& status) {
  // A caller can cause one of these per call: bounded, with a count.
  static auto* refusal_lines = new util::LogRate(kRefusalLinesPerSecond);
  if (!status.ok() && status.code() != absl::StatusCode::kInvalidArgument &&
      status.code() != absl::StatusCode::kNotFound) {
    refusal_lines->Log(
        status.code() == absl::StatusCode::kPermissionDenied ||
                status.code() == absl::StatusCode::kUnauthenticated
            ? util::Severity::kWarning
            : util::Severity::kError,
        absl::StrCat(rpc, " by ",
                     caller == nullptr ? "<unidentified>"
                                       : vault.RecordedIdentity(*caller),
                     " failed: ", status.ToString()));
  }
  return ToGrpcStatus(status);
}

// The completion of an asynchronous vault call: fills the response from an
// OK result with `fill`, then finishes the call (on the audit writer's
// thread, once the write is durable).
template <typename T, typename Fill>
vault::Vault::Done<absl::StatusOr<T>> FinishWhenDone(
    const vault::Vault* vault, BatchedFinisher* finisher,
    grpc::ServerUnaryReactor* reactor, absl::string_view rpc,
    const auth::Caller& caller, CallsInFlight::Slot slot, Fill fill) {
  auth::Caller who;  // what a log line may need of the caller
  who.identity = caller.identity;
  who.identity_is_common_name = caller.identity_is_common_name;
  return [vault, finisher, reactor, rpc, who = std::move(who),
          slot = std::move(slot),
          fill = std::move(fill)](absl::StatusOr<T> result) mutable {
    if (result.ok()) fill(*result);
    const grpc::Status status = Finish(*vault, rpc, &who, result.status());
    slot = CallsInFlight::Slot();  // the call is over
    finisher->Finish(reactor, status);
  };
}

grpc::Status DoTokenizeBatch(const vault::Vault& vault, CallsInFlight& calls,
                             const grpc::ServerContextBase& context,
                             const pb::TokenizeBatchRequest* request,
                             pb::TokenizeBatchResponse* response) {
  CallsInFlight::Slot slot;
  absl::StatusOr<auth::Caller> caller =
      AdmitCaller(vault, calls, context, pb::TOKENIZE, vault::kTokenizeBatchRpc,
                  HasUnknownFields(*request), &slot);
  if (!caller.ok())
    return Finish(vault, "TokenizeBatch", nullptr, caller.status());
  std::vector<vault::TokenizeRequest> requests;
  requests.reserve(request->requests_size());
  for (const pb::TokenizeRequest& r : request->requests()) {
    requests.push_back(FromProto(r));
  }
  auto results = vault.TokenizeBatch(*caller, std::move(requests));
  if (!results.ok()) {
    return Finish(vault, "TokenizeBatch", &*caller, results.status());
  }
  AddResults(*results, response);
  return grpc::Status::OK;
}

grpc::Status DoDetokenizeBatch(const vault::Vault& vault, CallsInFlight& calls,
                               const grpc::ServerContextBase& context,
                               const pb::DetokenizeBatchRequest* request,
                               pb::DetokenizeBatchResponse* response) {
  CallsInFlight::Slot slot;
  absl::StatusOr<auth::Caller> caller = AdmitCaller(
      vault, calls, context, pb::DETOKENIZE, vault::kDetokenizeBatchRpc,
      HasUnknownFields(*request), &slot);
  if (!caller.ok())
    return Finish(vault, "DetokenizeBatch", nullptr, caller.status());
  std::vector<vault::DetokenizeRequest> requests;
  requests.reserve(request->requests_size());
  for (const pb::DetokenizeRequest& r : request->requests()) {
    requests.push_back({r.token(), r.purpose()});
  }
  auto results = vault.DetokenizeBatch(*caller, requests);
  if (!results.ok()) {
    return Finish(vault, "DetokenizeBatch", &*caller, results.status());
  }
  AddResults(*results, response);
  return grpc::Status::OK;
}

grpc::Status DoDeleteToken(const vault::Vault& vault, CallsInFlight& calls,
                           const grpc::ServerContextBase& context,
                           const pb::DeleteTokenRequest* request,
                           pb::DeleteTokenResponse* response) {
  CallsInFlight::Slot slot;
  absl::StatusOr<auth::Caller> caller =
      AdmitCaller(vault, calls, context, pb::DELETE_TOKEN,
                  vault::kDeleteTokenRpc, HasUnknownFields(*request), &slot);
  if (!caller.ok()) {
    return Finish(vault, "DeleteToken", nullptr, caller.status());
  }
  absl::StatusOr<bool> deleted = vault.DeleteToken(*caller, request->token());
  if (!deleted.ok()) {
    return Finish(vault, "DeleteToken", &*caller, deleted.status());
  }
  response->set_deleted(*deleted);
  return grpc::Status::OK;
}

}  // namespace

void TokenVaultService::ScheduleOrRefuse(grpc::ServerUnaryReactor* reactor,
                                         absl::AnyInvocable<void()> work) {
  if (!executor_->Schedule(std::move(work))) {
    reactor->Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                 "server busy; retry with backoff"));
  }
}

grpc::ServerUnaryReactor* TokenVaultService::Offload(
    grpc::CallbackServerContext* context, std::function<grpc::Status()> call) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  ScheduleOrRefuse(
      reactor, [reactor, call = std::move(call)] { reactor->Finish(call()); });
  return reactor;
}

grpc::ServerUnaryReactor* TokenVaultService::Refuse(
    grpc::CallbackServerContext* context, pb::EventType type,
    absl::string_view rpc, bool has_unknown_fields,
    std::optional<absl::Status> refusal) {
  // Recording the refusal waits for the durable write: not on gRPC's threads.
  return Offload(context, [this, context, type, rpc, has_unknown_fields,
                           refusal = std::move(refusal)] {
    absl::StatusOr<auth::Caller> caller =
        IdentifyCaller(*vault_, *context, type, rpc, has_unknown_fields);
    if (caller.ok() && refusal.has_value()) {
      return Finish(*vault_, rpc, &*caller,
                    vault_->RecordRejected(*caller, type, rpc, *refusal));
    }
    return Finish(*vault_, rpc, caller.ok() ? &*caller : nullptr,
                  caller.status());
  });
}

template <typename T, typename Request, typename Start, typename Fill>
grpc::ServerUnaryReactor* TokenVaultService::ServeAsync(
    grpc::CallbackServerContext* context, const Request& request,
    pb::EventType type, absl::string_view rpc, absl::string_view name,
    Start start, Fill fill) {
  absl::StatusOr<auth::Caller> caller = CallerOf(*context);
  if (!caller.ok() || HasUnknownFields(request)) {
    return Refuse(context, type, rpc, caller.ok());
  }
  std::optional<CallsInFlight::Slot> slot =
      calls_->TryAcquire(caller->identity);
  if (!slot.has_value()) {
    return Refuse(context, type, rpc, false, TooManyCallsInFlight());
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto done = FinishWhenDone<T>(vault_, &finisher_, reactor, name, *caller,
                                *std::move(slot), std::move(fill));
  if (!options_.start_on_executor) {
    start(*caller, std::move(done));
    return reactor;
  }
  ScheduleOrRefuse(
      reactor,
      [start = std::move(start), caller = *std::move(caller),
       done = std::move(done)]() mutable { start(caller, std::move(done)); });
  return reactor;
}

grpc::ServerUnaryReactor* TokenVaultService::Tokenize(
    grpc::CallbackServerContext* context, const pb::TokenizeRequest* request,
    pb::TokenizeResponse* response) {
  return ServeAsync<vault::Tokenized>(
      context, *request, pb::TOKENIZE, vault::kTokenizeRpc, "Tokenize",
      [this, request](const auth::Caller& caller, auto done) {
        vault_->TokenizeAsync(caller, FromProto(*request), std::move(done));
      },
      [response](const vault::Tokenized& t) { ToProto(t, response); });
}

grpc::ServerUnaryReactor* TokenVaultService::Detokenize(
    grpc::CallbackServerContext* context, const pb::DetokenizeRequest* request,
    pb::DetokenizeResponse* response) {
  return ServeAsync<vault::Detokenized>(
      context, *request, pb::DETOKENIZE, vault::kDetokenizeRpc, "Detokenize",
      [this, request](const auth::Caller& caller, auto done) {
        vault_->DetokenizeAsync(caller, {request->token(), request->purpose()},
                                std::move(done));
      },
      [response](const vault::Detokenized& d) { ToProto(d, response); });
}

grpc::ServerUnaryReactor* TokenVaultService::TokenizeBatch(
    grpc::CallbackServerContext* context,
    const pb::TokenizeBatchRequest* request,
    pb::TokenizeBatchResponse* response) {
  return Offload(context, [this, context, request, response] {
    return DoTokenizeBatch(*vault_, *calls_, *context, request, response);
  });
}

grpc::ServerUnaryReactor* TokenVaultService::DetokenizeBatch(
    grpc::CallbackServerContext* context,
    const pb::DetokenizeBatchRequest* request,
    pb::DetokenizeBatchResponse* response) {
  return Offload(context, [this, context, request, response] {
    return DoDetokenizeBatch(*vault_, *calls_, *context, request, response);
  });
}

grpc::ServerUnaryReactor* TokenVaultService::GetTokenInfo(
    grpc::CallbackServerContext* context,
    const pb::GetTokenInfoRequest* request, pb::TokenInfo* response) {
  return ServeAsync<vault::TokenInfo>(
      context, *request, pb::TOKEN_INFO, vault::kGetTokenInfoRpc,
      "GetTokenInfo",
      [this, request](const auth::Caller& caller, auto done) {
        vault_->GetTokenInfoAsync(caller, request->token(), std::move(done));
      },
      [response](const vault::TokenInfo& info) { ToProto(info, response); });
}

grpc::ServerUnaryReactor* TokenVaultService::DeleteToken(
    grpc::CallbackServerContext* context, const pb::DeleteTokenRequest* request,
    pb::DeleteTokenResponse* response) {
  return Offload(context, [this, context, request, response] {
    return DoDeleteToken(*vault_, *calls_, *context, request, response);
  });
}

}  // namespace cardvault::service
