// A short run of cardvault-bench against a real cardvaultd (SoftHSM2,
// RocksDB, mutual TLS): every operation of the mix completes without error.
// Throughput is measured by the tool and written to docs/benchmarks.md,
// never asserted here.
#include <cstdlib>
#include <iostream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_env.h"

namespace cardvault {
namespace {

using ::cardvault::testing::IsOk;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(BenchSmokeTest, EveryOperationRunsWithoutErrors) {
  auto env = testing::TestEnv::Create();
  // A detokenizer without the dev policy's rate limit.
  env->IssueClient("bench-processor",
                   testing::TestEnv::Identity("bench-processor"));
  env->AddToPolicy(
      "bindings { identity: \"spiffe://cardvault.test/bench-processor\" "
      "roles: DETOKENIZER detokenize_domains: \"dev-merchant/pos\" }");
  const int port = testing::PickUnusedPort();
  auto server = testing::ServerProcess::Start(env->config_path(),
                                              env->dir() + "/server.log", port);
  ASSERT_THAT(server, IsOk());
  const std::string out = env->dir() + "/bench.out";
  const int status = std::system(
      absl::StrCat(CARDVAULT_BENCH_PATH, " --address=", (*server)->address(),
                   " --pki_dir=", env->dir(), "/pki",
                   " --detokenizer=bench-processor",
                   " --mix=health,tokenize,detokenize,info,batch",
                   " --batch_size=100 --pans=2000 --channels=2 --in_flight=8",
                   " --warmup_seconds=0.5 --duration_seconds=2 >", out, " 2>&1")
          .c_str());
  const std::string report = testing::ReadFileOrEmpty(out);
  EXPECT_EQ(status, 0) << report;
  for (const char* op : {"health", "tokenize", "detokenize", "info", "batch"}) {
    EXPECT_THAT(report, HasSubstr(absl::StrCat("{\"op\":\"", op, "\"")))
        << report;
  }
  EXPECT_THAT(report, HasSubstr("\"errors\":{}"));
  EXPECT_THAT(report, Not(HasSubstr("\"calls\":0,"))) << report;
  std::cout << report;
}

}  // namespace
}  // namespace cardvault
