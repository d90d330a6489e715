// Calls any method of a server with raw request bytes, as a hostile or
// newer client could: unknown fields, bytes that do not parse.
#ifndef CARDVAULT_TESTS_TESTING_GENERIC_CALL_H_
#define CARDVAULT_TESTS_TESTING_GENERIC_CALL_H_

#include <grpcpp/generic/generic_stub.h>

#include <string>

#include "absl/strings/string_view.h"

namespace cardvault::testing {

// One call of `method` ("/package.Service/Method") with `request` as its
// only message, unary or server-streaming: every response is read, or only
// the first when `stop_after_first` (for endless streams such as
// Health.Watch). `responses` counts them when given.
grpc::Status CallGeneric(grpc::GenericStub* stub, absl::string_view method,
                         const std::string& request,
                         bool stop_after_first = false,
                         int* responses = nullptr);

}  // namespace cardvault::testing

#endif  // CARDVAULT_TESTS_TESTING_GENERIC_CALL_H_
