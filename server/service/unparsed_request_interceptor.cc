#include "server/service/unparsed_request_interceptor.h"

#include <optional>

#include "absl/strings/string_view.h"
#include "server/service/caller_context.h"
#include "server/vault/key_admin.h"

namespace cardvault::service {
namespace {

namespace pb = ::cardvault::v1;
using grpc::experimental::InterceptionHookPoints;

// The audit event type of each method the server implements.
std::optional<pb::EventType> EventTypeOf(absl::string_view method) {
  static const std::pair<absl::string_view, pb::EventType> kMethods[] = {
      {vault::kTokenizeRpc, pb::TOKENIZE},
      {vault::kTokenizeBatchRpc, pb::TOKENIZE},
      {vault::kDetokenizeRpc, pb::DETOKENIZE},
      {vault::kDetokenizeBatchRpc, pb::DETOKENIZE},
      {vault::kGetTokenInfoRpc, pb::TOKEN_INFO},
      {vault::kDeleteTokenRpc, pb::DELETE_TOKEN},
      {vault::kListEventsRpc, pb::LIST_EVENTS},
      {vault::kVerifyChainRpc, pb::VERIFY_CHAIN},
      {vault::kListKeysRpc, pb::KEY_ADMIN},
      {vault::kRotateDataKeyRpc, pb::KEY_ADMIN},
      {vault::kProposeOperationRpc, pb::KEY_ADMIN},
      {vault::kApproveOperationRpc, pb::KEY_ADMIN},
      {vault::kListOperationsRpc, pb::KEY_ADMIN},
      {vault::kTakeHeldCvvRpc, pb::CVV_RELEASE},
  };
  for (const auto& [name, type] : kMethods) {
    if (name == method) return type;
  }
  return std::nullopt;
}

class UnparsedRequestInterceptor : public grpc::experimental::Interceptor {
 public:
  UnparsedRequestInterceptor(grpc::experimental::ServerRpcInfo* info,
                             const vault::Vault* vault,
                             std::optional<pb::EventType> type)
      : info_(info), vault_(vault), type_(type) {}

  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() == nullptr) {
      unparsed_ = true;
    }
    // A call gRPC refused before reading its message (its sync thread pool
    // exhausted) also has none: that refusal stands as it is.
    if (unparsed_ &&
        methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_STATUS) &&
        methods->GetSendStatus().error_code() !=
            grpc::StatusCode::RESOURCE_EXHAUSTED) {
      const absl::Status refusal = absl::InvalidArgumentError(
          "request does not parse: malformed protobuf, or a string field "
          "that is not valid UTF-8");
      methods->ModifySendStatus(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                             std::string(refusal.message())));
      if (type_.has_value()) {
        const grpc::ServerContextBase& context = *info_->server_context();
        absl::StatusOr<auth::Caller> caller = CallerOf(context);
        vault_->RecordRejectedAsync(
            caller.ok() ? *caller : UnidentifiedCaller(context), *type_,
            info_->method(), refusal);
      }
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* const info_;
  const vault::Vault* const vault_;
  const std::optional<pb::EventType> type_;
  bool unparsed_ = false;
};

}  // namespace

grpc::experimental::Interceptor*
UnparsedRequestInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  return new UnparsedRequestInterceptor(info, vault_,
                                        EventTypeOf(info->method()));
}

}  // namespace cardvault::service
