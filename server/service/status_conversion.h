// The one place an absl::Status becomes a grpc::Status.
#ifndef CARDVAULT_SERVER_SERVICE_STATUS_CONVERSION_H_
#define CARDVAULT_SERVER_SERVICE_STATUS_CONVERSION_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace cardvault::service {

// Same code (the two enums share values); the message is kept, as every
// message the vault composes is free of submitted values. INTERNAL and
// UNKNOWN details stay in the server log; the client gets a generic text.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_STATUS_CONVERSION_H_
