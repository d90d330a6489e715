// gRPC front of the vault: proto <-> domain translation and status mapping,
// nothing else. Request and response messages are never logged.
//
// Served with gRPC's callback API. Tokenize, Detokenize and GetTokenInfo
// run on gRPC's callback thread up to the durable write (checks, one storage
// read, sealing: microseconds) and are finished by the audit writer once the
// write is durable, so no thread waits for the fsync and none is woken per
// call. What waits on the write (batches, deletions, refusals recorded
// before the vault) is handed to a BlockingExecutor thread; a full executor
// queue answers RESOURCE_EXHAUSTED. With Options::start_on_executor (the
// vault seals in the HSM, whose calls may wait for a session or a network
// device) the single calls start on the executor too.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_SERVICE_TOKEN_VAULT_SERVICE_H_
#define CARDVAULT_SERVER_SERVICE_TOKEN_VAULT_SERVICE_H_

#include <functional>
#include <optional>

#include "absl/functional/any_invocable.h"
#include "cardvault/v1/vault.grpc.pb.h"
#include "server/service/batched_finisher.h"
#include "server/service/calls_in_flight.h"
#include "server/util/blocking_executor.h"
#include "server/vault/vault.h"

namespace cardvault::service {

class TokenVaultService final
    : public ::cardvault::v1::TokenVault::CallbackService {
 public:
  struct Options {
    // Start Tokenize, Detokenize and GetTokenInfo on the executor rather
    // than on gRPC's callback thread: for a vault whose calls block (HSM
    // sealing), so that gRPC's few pollers never wait on the HSM. Default
    // false (the vault's single calls do not block before the write).
    bool start_on_executor = false;
  };

  // `vault`, `executor` and `calls` must outlive the service.
  TokenVaultService(const vault::Vault* vault, util::BlockingExecutor* executor,
                    CallsInFlight* calls, Options options)
      : vault_(vault), executor_(executor), calls_(calls), options_(options) {}

  grpc::ServerUnaryReactor* Tokenize(
      grpc::CallbackServerContext* context,
      const ::cardvault::v1::TokenizeRequest* request,
      ::cardvault::v1::TokenizeResponse* response) override;

  grpc::ServerUnaryReactor* Detokenize(
      grpc::CallbackServerContext* context,
      const ::cardvault::v1::DetokenizeRequest* request,
      ::cardvault::v1::DetokenizeResponse* response) override;

  grpc::ServerUnaryReactor* TokenizeBatch(
      grpc::CallbackServerContext* context,
      const ::cardvault::v1::TokenizeBatchRequest* request,
      ::cardvault::v1::TokenizeBatchResponse* response) override;

  grpc::ServerUnaryReactor* DetokenizeBatch(
      grpc::CallbackServerContext* context,
      const ::cardvault::v1::DetokenizeBatchRequest* request,
      ::cardvault::v1::DetokenizeBatchResponse* response) override;

  grpc::ServerUnaryReactor* GetTokenInfo(
      grpc::CallbackServerContext* context,
      const ::cardvault::v1::GetTokenInfoRequest* request,
      ::cardvault::v1::TokenInfo* response) override;

  grpc::ServerUnaryReactor* DeleteToken(
      grpc::CallbackServerContext* context,
      const ::cardvault::v1::DeleteTokenRequest* request,
      ::cardvault::v1::DeleteTokenResponse* response) override;

 private:
  // Runs `work` on the executor, or finishes `reactor` with
  // RESOURCE_EXHAUSTED if the executor's queue is full.
  void ScheduleOrRefuse(grpc::ServerUnaryReactor* reactor,
                        absl::AnyInvocable<void()> work);
  // Runs `call` on the executor and finishes the call with its status.
  grpc::ServerUnaryReactor* Offload(grpc::CallbackServerContext* context,
                                    std::function<grpc::Status()> call);
  // Serves a call on the vault's asynchronous path: `start(caller, done)`
  // begins it, `fill(result)` writes an OK result into the response, and
  // the call is finished once the vault calls `done`.
  template <typename T, typename Request, typename Start, typename Fill>
  grpc::ServerUnaryReactor* ServeAsync(grpc::CallbackServerContext* context,
                                       const Request& request,
                                       ::cardvault::v1::EventType type,
                                       absl::string_view rpc,
                                       absl::string_view name, Start start,
                                       Fill fill);
  // Finishes a call that has no usable identity, carries fields this
  // server does not accept, or is refused with `refusal`, once its refusal
  // is recorded.
  grpc::ServerUnaryReactor* Refuse(
      grpc::CallbackServerContext* context, ::cardvault::v1::EventType type,
      absl::string_view rpc, bool has_unknown_fields,
      std::optional<absl::Status> refusal = std::nullopt);

  const vault::Vault* const vault_;
  util::BlockingExecutor* const executor_;
  CallsInFlight* const calls_;
  const Options options_;
  BatchedFinisher finisher_;
};

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_TOKEN_VAULT_SERVICE_H_
