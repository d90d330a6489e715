// grpc.health.v1.Health/Check without generated code: Debian's gRPC packages
// ship no health.proto, so the two tiny messages are encoded here by their
// documented wire format (HealthCheckRequest{string service = 1},
// HealthCheckResponse{ServingStatus status = 1}).
#ifndef CARDVAULT_CLIENT_HEALTH_CHECK_H_
#define CARDVAULT_CLIENT_HEALTH_CHECK_H_

#include <grpcpp/channel.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace cardvault::client {

// Values of grpc.health.v1.HealthCheckResponse.ServingStatus.
enum class ServingStatus { kUnknown = 0, kServing = 1, kNotServing = 2 };

// Calls Health/Check for `service` ("" = the whole server) and waits.
absl::StatusOr<ServingStatus> CheckHealth(
    const std::shared_ptr<grpc::Channel>& channel, absl::string_view service,
    absl::Duration deadline);

}  // namespace cardvault::client

#endif  // CARDVAULT_CLIENT_HEALTH_CHECK_H_
