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
using ::testing::AllOf;
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

TEST_F(CrlCheckTest, RevokingAnIntermediateCaRevokesItsClients) {
  // Root R, intermediate I (signed by R), client L (signed by I).
  const std::string d = env_->dir() + "/chain";
  const std::string sh = absl::StrCat(
      "set -e; mkdir -p ", d, "/r ", d, "/i; cd ", d, "; ",
      "openssl ecparam -name prime256v1 -genkey -noout -out r/ca.key; ",
      "openssl req -new -x509 -key r/ca.key -subj /CN=root-r -days 30 ",
      "-addext basicConstraints=critical,CA:TRUE ",
      "-addext keyUsage=critical,keyCertSign,cRLSign -out r/ca.crt; ",
      "openssl ecparam -name prime256v1 -genkey -noout -out i/ca.key; ",
      "openssl req -new -key i/ca.key -subj /CN=intermediate-i -out i.csr; ",
      "printf 'basicConstraints=critical,CA:TRUE\\nkeyUsage=critical,",
      "keyCertSign,cRLSign\\n' > i.ext; ",
      "openssl x509 -req -in i.csr -CA r/ca.crt -CAkey r/ca.key ",
      "-set_serial 0x1234ABCD -days 30 -extfile i.ext -out i/ca.crt; ",
      "openssl ecparam -name prime256v1 -genkey -noout -out l.key; ",
      "openssl req -new -key l.key -subj /CN=leaf -out l.csr; ",
      "printf 'extendedKeyUsage=clientAuth\\n' > l.ext; ",
      "openssl x509 -req -in l.csr -CA i/ca.crt -CAkey i/ca.key ",
      "-set_serial 0x77 -days 30 -extfile l.ext -out l.crt; ",
      "cat r/ca.crt i/ca.crt > cas.pem; ",
      CARDVAULT_SOURCE_DIR "/deploy/revoke-cert.sh --empty r crl >/dev/null; ",
      CARDVAULT_SOURCE_DIR "/deploy/revoke-cert.sh --empty i crl >/dev/null");
  testing::RunOrDie(absl::StrCat("bash -c \"", sh, "\" 2>/dev/null"));
  const std::string leaf = testing::ReadFileOrEmpty(d + "/l.crt");
  auto before = ClientCaSet::Load(d + "/cas.pem", d + "/crl");
  ASSERT_THAT(before, IsOk());
  EXPECT_THAT((*before)->CheckCertificate(leaf, absl::Now()), IsOk());
  // The root's CRL now lists the intermediate.
  testing::RunOrDie(absl::StrCat("cd ", d, " && ", CARDVAULT_SOURCE_DIR,
                                 "/deploy/revoke-cert.sh i/ca.crt r crl "
                                 ">/dev/null"));
  auto after = ClientCaSet::Load(d + "/cas.pem", d + "/crl");
  ASSERT_THAT(after, IsOk());
  EXPECT_THAT((*after)->CheckCertificate(leaf, absl::Now()),
              StatusIs(absl::StatusCode::kUnauthenticated,
                       AllOf(HasSubstr("its CA certificate serial 1234ABCD"),
                             HasSubstr("is revoked"))));
}

}  // namespace
}  // namespace cardvault::crypto
