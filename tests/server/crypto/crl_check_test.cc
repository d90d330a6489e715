#include "server/crypto/crl_check.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_env.h"

namespace cardvault::crypto {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;

class CrlCheckTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { env_ = testing::TestEnv::Create().release(); }
  static void TearDownTestSuite() { delete env_; }
  static testing::TestEnv* env_;
};
testing::TestEnv* CrlCheckTest::env_ = nullptr;

TEST_F(CrlCheckTest, CurrentCrlOfTheCaPasses) {
  const std::string crl = env_->Revoke("auditor");
  EXPECT_THAT(CheckCrlCoverage(env_->pki("ca.crt"), crl, absl::Now()), IsOk());
}

TEST_F(CrlCheckTest, ExpiredCrlFails) {
  const std::string crl = env_->Revoke("admin");
  // revoke-cert.sh issues CRLs valid for 30 days.
  EXPECT_THAT(CheckCrlCoverage(env_->pki("ca.crt"), crl,
                               absl::Now() + absl::Hours(24 * 31)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("no current CRL")));
}

TEST_F(CrlCheckTest, EmptyDirectoryOrMissingCaFileFails) {
  testing::RunOrDie("mkdir -p " + env_->dir() + "/empty");
  EXPECT_THAT(CheckCrlCoverage(env_->pki("ca.crt"), env_->dir() + "/empty",
                               absl::Now()),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(CheckCrlCoverage(env_->dir() + "/nope.crt",
                               env_->dir() + "/empty", absl::Now()),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

}  // namespace
}  // namespace cardvault::crypto
