#include "server/service/token_vault_service.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "server/service/caller_context.h"
#include "server/service/status_conversion.h"
#include "server/util/log.h"

namespace cardvault::service {
namespace {

using ::cardvault::v1::DetokenizeRequest;
using ::cardvault::v1::DetokenizeResponse;
using ::cardvault::v1::TokenizeRequest;
using ::cardvault::v1::TokenizeResponse;

// Fields this server does not know (e.g. a CVV sent by a newer client) are
// refused rather than silently dropped: nothing is accepted that is not kept.
bool HasUnknownFields(const google::protobuf::Message& message) {
  return !message.GetReflection()->GetUnknownFields(message).empty();
}

vault::Card FromProto(const ::cardvault::v1::Card& card) {
  vault::Card out;
  out.pan = crypto::SecretBytes(card.pan());
  out.exp_month = card.exp_month();
  out.exp_year = card.exp_year();
  out.cardholder_name = crypto::SecretBytes(card.cardholder_name());
  return out;
}

void ToProto(const vault::Card& card, ::cardvault::v1::Card* out) {
  out->set_pan(std::string(card.pan.view()));
  out->set_exp_month(card.exp_month);
  out->set_exp_year(card.exp_year);
  out->set_cardholder_name(std::string(card.cardholder_name.view()));
}

// Logs what an operator needs (RPC, caller, code) and never the request.
grpc::Status Finish(absl::string_view rpc, const auth::Caller* caller,
                    const absl::Status& status) {
  if (!status.ok() && status.code() != absl::StatusCode::kInvalidArgument &&
      status.code() != absl::StatusCode::kNotFound) {
    util::Log(status.code() == absl::StatusCode::kPermissionDenied ||
                      status.code() == absl::StatusCode::kUnauthenticated
                  ? util::Severity::kWarning
                  : util::Severity::kError,
              absl::StrCat(rpc, " by ",
                           caller != nullptr ? caller->identity : "<unknown>",
                           " failed: ", status.ToString()));
  }
  return ToGrpcStatus(status);
}

}  // namespace

grpc::Status TokenVaultService::Tokenize(grpc::ServerContext* context,
                                         const TokenizeRequest* request,
                                         TokenizeResponse* response) {
  absl::StatusOr<auth::Caller> caller = CallerOf(*context);
  if (!caller.ok()) {
    return Finish(
        "Tokenize", nullptr,
        vault_->RecordRejected(UnidentifiedCaller(*context), v1::TOKENIZE,
                               vault::kTokenizeRpc, caller.status()));
  }
  if (HasUnknownFields(*request) || HasUnknownFields(request->card())) {
    return Finish("Tokenize", &*caller,
                  vault_->RecordRejected(
                      *caller, v1::TOKENIZE, vault::kTokenizeRpc,
                      absl::InvalidArgumentError(
                          "request has fields this server does not accept (a "
                          "CVV is never accepted)")));
  }
  absl::StatusOr<vault::Tokenized> token =
      vault_->Tokenize(*caller, FromProto(request->card()), request->domain());
  if (!token.ok()) return Finish("Tokenize", &*caller, token.status());
  response->set_token(std::move(token->token));
  response->set_domain(std::move(token->domain));
  return grpc::Status::OK;
}

grpc::Status TokenVaultService::Detokenize(grpc::ServerContext* context,
                                           const DetokenizeRequest* request,
                                           DetokenizeResponse* response) {
  absl::StatusOr<auth::Caller> caller = CallerOf(*context);
  if (!caller.ok()) {
    return Finish(
        "Detokenize", nullptr,
        vault_->RecordRejected(UnidentifiedCaller(*context), v1::DETOKENIZE,
                               vault::kDetokenizeRpc, caller.status()));
  }
  if (HasUnknownFields(*request)) {
    return Finish("Detokenize", &*caller,
                  vault_->RecordRejected(
                      *caller, v1::DETOKENIZE, vault::kDetokenizeRpc,
                      absl::InvalidArgumentError(
                          "request has fields this server does not accept")));
  }
  absl::StatusOr<vault::OpenedCard> opened =
      vault_->Detokenize(*caller, request->token(), request->purpose());
  if (!opened.ok()) return Finish("Detokenize", &*caller, opened.status());
  ToProto(opened->card, response->mutable_card());
  response->set_domain(std::move(opened->domain));
  return grpc::Status::OK;
}

}  // namespace cardvault::service
