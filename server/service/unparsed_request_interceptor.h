// Answers a request that does not parse (malformed protobuf, or invalid
// UTF-8 in a string field) with INVALID_ARGUMENT, and records it.
//
// gRPC 1.51 answers such a request itself, before any service code runs:
// UNIMPLEMENTED on the callback API, INTERNAL on the synchronous one, and
// nothing reaches the audit trail. This interceptor sees that the request
// was not received (POST_RECV_MESSAGE without a message) and rewrites the
// status that is about to be sent, recording the refusal without waiting
// for its write (the call has been refused either way).
//
// Thread safety: the factory is thread-safe; each interceptor serves one
// call.
#ifndef CARDVAULT_SERVER_SERVICE_UNPARSED_REQUEST_INTERCEPTOR_H_
#define CARDVAULT_SERVER_SERVICE_UNPARSED_REQUEST_INTERCEPTOR_H_

#include <grpcpp/support/server_interceptor.h>

#include "server/vault/vault.h"

namespace cardvault::service {

class UnparsedRequestInterceptorFactory
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // `vault` must outlive the server.
  explicit UnparsedRequestInterceptorFactory(const vault::Vault* vault)
      : vault_(vault) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  const vault::Vault* const vault_;
};

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_UNPARSED_REQUEST_INTERCEPTOR_H_
