// Tells the listener which connections have carried a call, so that they
// count as established (mutual TLS done) and are never taken for a pending
// connection when a flood fills the pending budget. It adds no interceptor
// to any call: it only looks at the call's peer when it is created, and
// only while the listener has connections waiting for a first call.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_SERVICE_SERVED_CONNECTION_OBSERVER_H_
#define CARDVAULT_SERVER_SERVICE_SERVED_CONNECTION_OBSERVER_H_

#include <grpcpp/server_context.h>
#include <grpcpp/support/server_interceptor.h>

#include <functional>
#include <utility>

#include "absl/strings/string_view.h"

namespace cardvault::service {

class ServedConnectionObserver
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // `wanted()` says whether `served(peer)` has anything to look up.
  ServedConnectionObserver(std::function<bool()> wanted,
                           std::function<void(absl::string_view)> served)
      : wanted_(std::move(wanted)), served_(std::move(served)) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    if (wanted_() && info->server_context() != nullptr) {
      served_(info->server_context()->peer());
    }
    return nullptr;
  }

 private:
  const std::function<bool()> wanted_;
  const std::function<void(absl::string_view)> served_;
};

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_SERVED_CONNECTION_OBSERVER_H_
