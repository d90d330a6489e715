#include "server/service/library_logs.h"

#include <google/protobuf/stubs/logging.h>
#include <grpc/support/log.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/util/descriptor_budget.h"
#include "server/util/log.h"

namespace cardvault::service {
namespace {

util::LogRate& LibraryRate() {
  static auto* rate = new util::LogRate(kLibraryLinesPerSecond);
  return *rate;
}

// Messages any peer without a certificate can cause at will, once or more
// per connection, get a budget of their own, so that they cannot use up
// every other message's share.
util::LogRate* PeerNoiseRate(absl::string_view message) {
  static auto* rate = new util::LogRate(kPeerNoiseLinesPerSecond);
  for (absl::string_view noise : {"No match found for server name"}) {
    if (absl::StrContains(message, noise)) return rate;
  }
  return nullptr;
}

void FromGrpc(gpr_log_func_args* args) {
  if (args->message != nullptr) {
    util::NoteIfOutOfDescriptors(args->message, "in gRPC");
  }
  const util::Severity severity =
      args->severity == GPR_LOG_SEVERITY_ERROR  ? util::Severity::kError
      : args->severity == GPR_LOG_SEVERITY_INFO ? util::Severity::kInfo
                                                : util::Severity::kInfo;
  const absl::string_view message =
      args->message == nullptr ? "" : args->message;
  util::LogRate* rate = PeerNoiseRate(message);
  (rate == nullptr ? LibraryRate() : *rate)
      .Log(severity,
           absl::StrCat("grpc ", args->file == nullptr ? "" : args->file, ":",
                        args->line, ": ", message),
           /*library=*/true);
}

void FromProtobuf(google::protobuf::LogLevel level, const char* filename,
                  int line, const std::string& message) {
  LibraryRate().Log(
      level >= google::protobuf::LOGLEVEL_ERROR ? util::Severity::kError
                                                : util::Severity::kWarning,
      absl::StrCat("protobuf ", filename == nullptr ? "" : filename, ":", line,
                   ": ", message),
      /*library=*/true);
}

}  // namespace

void RouteLibraryLogs() {
  gpr_set_log_function(FromGrpc);
  google::protobuf::SetLogHandler(FromProtobuf);
}

}  // namespace cardvault::service
