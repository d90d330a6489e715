// Reading text-format protobuf files with errors a person can act on.
#ifndef CARDVAULT_SERVER_CONFIG_TEXT_PROTO_H_
#define CARDVAULT_SERVER_CONFIG_TEXT_PROTO_H_

#include <google/protobuf/message.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace cardvault::config {

// The whole file; NOT_FOUND naming `what` and `path` if it cannot be read.
absl::StatusOr<std::string> ReadTextFile(const std::string& path,
                                         absl::string_view what);

// Parses `text` into `message`. Unknown fields and syntax errors give
// INVALID_ARGUMENT "<source>:<line>:<column>: <error>".
absl::Status ParseTextProto(absl::string_view text, absl::string_view source,
                            google::protobuf::Message* message);

}  // namespace cardvault::config

#endif  // CARDVAULT_SERVER_CONFIG_TEXT_PROTO_H_
