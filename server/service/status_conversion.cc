#include "server/service/status_conversion.h"

#include <string>

namespace cardvault::service {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const auto code = static_cast<grpc::StatusCode>(status.code());
  if (status.code() == absl::StatusCode::kInternal ||
      status.code() == absl::StatusCode::kUnknown) {
    return grpc::Status(code, "internal error");
  }
  return grpc::Status(code, std::string(status.message()));
}

}  // namespace cardvault::service
