#include "server/service/library_logs.h"

#include <google/protobuf/stubs/logging.h>
#include <grpc/grpc.h>
#include <grpc/support/log.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/util/log.h"
#include "tests/testing/test_env.h"

namespace cardvault::service {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// What is written to stderr while `f` runs.
template <typename F>
std::string Stderr(F f) {
  char path[] = "/tmp/cardvault-stderr-XXXXXX";
  const int fd = mkstemp(path);
  const int saved = dup(STDERR_FILENO);
  dup2(fd, STDERR_FILENO);
  f();
  fflush(stderr);
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(fd);
  std::string out = testing::ReadFileOrEmpty(path);
  unlink(path);
  return out;
}

TEST(LibraryLogsTest, GrpcAndProtobufLinesAreMaskedEscapedAndOneLineEach) {
  RouteLibraryLogs();
  grpc_init();  // as in the server, whose gRPC starts after the routing
  const std::string out = Stderr([] {
    // As gRPC's HPACK parser quotes a malformed header value.
    gpr_log(GPR_ERROR, "Error parsing 'grpc-encoding' metadata: %s",
            "4111 1111 1111 1111\n2030-01-01T00:00:00.000Z I cardvaultd: "
            "FORGED 5105105105105100");
    GOOGLE_LOG(ERROR) << "String field contains invalid UTF-8 data: "
                      << "4012-8888-8888-1881";
  });
  EXPECT_THAT(out, HasSubstr("cardvaultd: grpc "));
  EXPECT_THAT(out, HasSubstr("cardvaultd: protobuf "));
  EXPECT_THAT(out, Not(HasSubstr("\n2030-01-01")));
  EXPECT_THAT(out, HasSubstr("\\x0a2030"));
  EXPECT_THAT(out, Not(HasSubstr("4111 1111")));
  EXPECT_THAT(out, Not(HasSubstr("5105105105105100")));
  EXPECT_THAT(out, Not(HasSubstr("4012-8888")));
}

TEST(LibraryLogsTest, AFloodOfLibraryLinesIsBounded) {
  RouteLibraryLogs();
  const std::string out = Stderr([] {
    for (int i = 0; i < 5000; ++i) gpr_log(GPR_ERROR, "handshake failed %d", i);
  });
  size_t lines = 0;
  for (char c : out) lines += c == '\n';
  EXPECT_LE(lines, static_cast<size_t>(kLibraryLinesPerSecond) * 3);
}

// A message any peer can cause at will (a bad TLS server name, twice a
// connection) does not take the share of every other message.
TEST(LibraryLogsTest, PeerCausedNoiseLeavesRoomForOtherLines) {
  RouteLibraryLogs();
  absl::SleepFor(absl::Seconds(1));  // the shared budget refills
  const std::string out = Stderr([] {
    for (int i = 0; i < 5000; ++i) {
      gpr_log(GPR_INFO, "No match found for server name: x%d.", i);
    }
    for (int i = 0; i < 5; ++i) gpr_log(GPR_ERROR, "a different message %d", i);
  });
  size_t noise = 0;
  for (size_t at = out.find("No match found"); at != std::string::npos;
       at = out.find("No match found", at + 1)) {
    ++noise;
  }
  EXPECT_LE(noise, static_cast<size_t>(kPeerNoiseLinesPerSecond) * 3);
  EXPECT_THAT(out, HasSubstr("a different message 4"));
}

TEST(LogRateTest, SaysHowManyLinesItSuppressed) {
  util::LogRate rate(2);
  const std::string out = Stderr([&] {
    for (int i = 0; i < 50; ++i) rate.Log(util::Severity::kWarning, "refused");
    absl::SleepFor(absl::Seconds(1));
    rate.Log(util::Severity::kWarning, "refused");
  });
  EXPECT_THAT(out, HasSubstr("refused (48 lines like this suppressed before)"));
}

}  // namespace
}  // namespace cardvault::service
