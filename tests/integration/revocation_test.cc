// PCI DSS 4.2.1: only valid, unrevoked client certificates are accepted. A
// revoked certificate is refused at the handshake even though its identity
// is in the policy.
#include "absl/strings/str_cat.h"
#include "client/vault_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/clients.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_env.h"

namespace cardvault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;

client::ClientOptions Options(const testing::TestEnv& env,
                              const testing::ServerProcess& server,
                              absl::string_view name) {
  return testing::ClientOptionsFor(env, server.address(), name);
}

v1::Card TestCard() {
  v1::Card card;
  card.set_pan("4111111111111111");
  return card;
}

TEST(RevocationTest, RevokedCertificateIsRefusedAtHandshake) {
  auto env = testing::TestEnv::Create();
  // A second certificate for the pos identity, then reported stolen.
  env->IssueClient("stolen-pos", testing::TestEnv::Identity("pos"));
  const std::string crl = env->Revoke("stolen-pos");
  env->AddToConfig("tls", absl::StrCat("crl_directory: \"", crl, "\""));
  auto server = testing::ServerProcess::Start(env->config_path(),
                                              env->dir() + "/server.log");
  ASSERT_THAT(server, IsOk());

  auto pos = *client::VaultClient::Create(Options(*env, **server, "pos"));
  EXPECT_THAT(pos->Tokenize(TestCard()), IsOk());

  auto stolen =
      *client::VaultClient::Create(Options(*env, **server, "stolen-pos"));
  EXPECT_THAT(stolen->Tokenize(TestCard()),
              StatusIs(absl::StatusCode::kUnavailable));
  auto channel =
      *client::CreateMutualTlsChannel(Options(*env, **server, "stolen-pos"));
  EXPECT_FALSE(channel->WaitForConnected(
      absl::ToChronoTime(absl::Now() + absl::Seconds(2))));
}

TEST(RevocationTest, ServerRefusesToStartWithoutACrlOfTheClientCa) {
  // gRPC would let every certificate through if the directory held no CRL
  // for the CA, so cardvaultd refuses to start instead of running unchecked.
  auto env = testing::TestEnv::Create();
  const std::string empty = env->dir() + "/no-crls";
  testing::RunOrDie("mkdir -p " + empty);
  env->AddToConfig("tls", absl::StrCat("crl_directory: \"", empty, "\""));
  auto server = testing::ServerProcess::Start(env->config_path(),
                                              env->dir() + "/server.log");
  EXPECT_THAT(server,
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("no current CRL signed by client CA")));
}

TEST(RevocationTest, ServerRefusesACrlFromAnotherCa) {
  auto env = testing::TestEnv::Create();
  const std::string foreign = env->MakeForeignPki("foreign");
  // A CRL signed by the foreign CA, renamed to the real CA's hash.
  testing::RunOrDie(absl::StrCat(
      CARDVAULT_SOURCE_DIR "/deploy/revoke-cert.sh --empty ", env->dir(),
      "/foreign/ca ", env->dir(), "/foreign-crl >/dev/null && mkdir -p ",
      env->dir(), "/crl && cp ", env->dir(), "/foreign-crl/*.r0 ", env->dir(),
      "/crl/$(openssl x509 -in ", env->pki("ca.crt"), " -noout -hash).r0"));
  env->AddToConfig("tls",
                   absl::StrCat("crl_directory: \"", env->dir(), "/crl\""));
  auto server = testing::ServerProcess::Start(env->config_path(),
                                              env->dir() + "/server.log");
  EXPECT_THAT(server, StatusIs(absl::StatusCode::kFailedPrecondition));
}

}  // namespace
}  // namespace cardvault
