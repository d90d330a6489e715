// PCI DSS 4.2.1: only valid, unrevoked client certificates are accepted. A
// revoked certificate is refused at the handshake even though its identity
// is in the policy, also when it is revoked while the server runs; trust
// changes (CAs added, CRLs expiring) apply without a restart.
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/vault_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/clients.h"
#include "tests/testing/eventually.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_env.h"

namespace cardvault {
namespace {

using ::cardvault::testing::Eventually;
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

// A fresh channel's first call (a new handshake each time).
absl::Status TokenizeOnNewConnection(const testing::TestEnv& env,
                                     const testing::ServerProcess& server,
                                     absl::string_view name) {
  client::ClientOptions o = Options(env, server, name);
  o.deadline = absl::Seconds(3);
  return (*client::VaultClient::Create(o))->Tokenize(TestCard()).status();
}

// Appends a config block (the generated config has no `limits` block).
void AppendToConfig(const testing::TestEnv& env, absl::string_view text) {
  std::ofstream(env.config_path(), std::ios::app) << text << "\n";
}

// Reloads within a second, connections live 3 s: a trust change reaches
// new and open connections within the test's patience.
void FastTrustChanges(const testing::TestEnv& env, const std::string& crl) {
  env.AddToConfig("tls", absl::StrCat("crl_directory: \"", crl, "\""));
  env.AddToConfig("tls", "refresh_interval_seconds: 1");
  AppendToConfig(env,
                 "limits { max_connection_age_seconds: 3 "
                 "max_connection_age_grace_seconds: 1 }");
}

TEST(RevocationTest,
     CertificateRevokedWhileServingIsRefusedAndLosesItsConnection) {
  auto env = testing::TestEnv::Create();
  // A leaver's certificate, for an identity that stays in the policy.
  env->IssueClient("leaver", testing::TestEnv::Identity("pos"));
  const std::string crl = env->dir() + "/crl";
  testing::RunOrDie(absl::StrCat(CARDVAULT_SOURCE_DIR
                                 "/deploy/revoke-cert.sh --empty ",
                                 env->dir(), "/ca ", crl, " >/dev/null"));
  FastTrustChanges(*env, crl);
  const std::string log = env->dir() + "/server.log";
  auto server = testing::ServerProcess::Start(env->config_path(), log);
  ASSERT_THAT(server, IsOk());
  auto open = *client::VaultClient::Create(Options(*env, **server, "leaver"));
  ASSERT_THAT(open->Tokenize(TestCard()), IsOk());

  env->Revoke("leaver");
  const absl::Time revoked = absl::Now();
  // New connections: refused within the refresh interval and a handshake.
  EXPECT_TRUE(Eventually(absl::Seconds(5), [&] {
    return absl::IsUnavailable(
        TokenizeOnNewConnection(*env, **server, "leaver"));
  }));
  EXPECT_LT(absl::Now() - revoked, absl::Seconds(5));
  // The open connection ends at its age (3 s, +10 % jitter, +1 s grace) and
  // cannot come back.
  EXPECT_TRUE(Eventually(absl::Seconds(10),
                         [&] { return !open->Tokenize(TestCard()).ok(); }));
  EXPECT_THAT(open->Tokenize(TestCard()),
              StatusIs(absl::StatusCode::kUnavailable));
  // Others are unaffected, on old and new connections.
  EXPECT_THAT(TokenizeOnNewConnection(*env, **server, "pos"), IsOk());
  EXPECT_THAT(testing::ReadFileOrEmpty(log),
              HasSubstr("handshake refused: client certificate serial"));
  EXPECT_THAT(testing::ReadFileOrEmpty(log), HasSubstr("is revoked"));
}

TEST(RevocationTest, AnOlderCrlCannotUnrevokeACertificate) {
  auto env = testing::TestEnv::Create();
  env->IssueClient("leaver", testing::TestEnv::Identity("pos"));
  const std::string crl = env->dir() + "/crl";
  testing::RunOrDie(absl::StrCat(CARDVAULT_SOURCE_DIR
                                 "/deploy/revoke-cert.sh --empty ",
                                 env->dir(), "/ca ", crl, " >/dev/null && cp ",
                                 crl, "/*.r0 ", env->dir(), "/old-crl.pem"));
  FastTrustChanges(*env, crl);
  const std::string log = env->dir() + "/server.log";
  auto server = testing::ServerProcess::Start(env->config_path(), log);
  ASSERT_THAT(server, IsOk());
  absl::SleepFor(absl::Seconds(1));  // the next CRL is a second newer
  env->Revoke("leaver");
  EXPECT_TRUE(Eventually(absl::Seconds(5), [&] {
    return absl::IsUnavailable(
        TokenizeOnNewConnection(*env, **server, "leaver"));
  }));
  // The CRL from before the revocation, validly signed, put back.
  testing::RunOrDie(absl::StrCat("cp ", env->dir(), "/old-crl.pem ", crl,
                                 "/.old && mv ", crl, "/.old $(ls ", crl,
                                 "/*.r0)"));
  EXPECT_TRUE(Eventually(absl::Seconds(5), [&] {
    return absl::StrContains(testing::ReadFileOrEmpty(log),
                             "is older than the one in force");
  }));
  EXPECT_THAT(TokenizeOnNewConnection(*env, **server, "leaver"),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(TokenizeOnNewConnection(*env, **server, "pos"), IsOk());
}

TEST(RevocationTest, CaAddedWhileServingIsTrustedOnlyWithACurrentCrl) {
  auto env = testing::TestEnv::Create();
  const std::string crl = env->dir() + "/crl";
  env->Revoke("auditor");
  FastTrustChanges(*env, crl);
  const std::string log = env->dir() + "/server.log";
  auto server = testing::ServerProcess::Start(env->config_path(), log);
  ASSERT_THAT(server, IsOk());
  // Another CA, whose pos certificate names a bound identity.
  const std::string foreign = env->MakeForeignPki("foreign");
  client::ClientOptions foreign_pos = Options(*env, **server, "pos");
  foreign_pos.cert_file = foreign + "/pos.crt";
  foreign_pos.key_file = foreign + "/pos.key";
  foreign_pos.deadline = absl::Seconds(3);
  auto try_foreign = [&] {
    return (*client::VaultClient::Create(foreign_pos))
        ->Tokenize(TestCard())
        .status();
  };
  EXPECT_THAT(try_foreign(), StatusIs(absl::StatusCode::kUnavailable));
  // The operator appends the CA, forgetting its CRL: still refused, loudly.
  testing::RunOrDie(
      absl::StrCat("cat ", foreign, "/ca.crt >> ", env->pki("ca.crt")));
  EXPECT_TRUE(Eventually(absl::Seconds(5), [&] {
    return absl::StrContains(testing::ReadFileOrEmpty(log),
                             "has no CRL it signed");
  }));
  absl::SleepFor(absl::Seconds(2));  // both the roots and the CRLs reloaded
  EXPECT_THAT(try_foreign(), StatusIs(absl::StatusCode::kUnavailable));
  // With its CRL in place, its clients are accepted.
  testing::RunOrDie(
      absl::StrCat(CARDVAULT_SOURCE_DIR "/deploy/revoke-cert.sh --empty ",
                   env->dir(), "/foreign/ca ", crl, " >/dev/null"));
  EXPECT_TRUE(Eventually(absl::Seconds(5), [&] { return try_foreign().ok(); }));
  EXPECT_THAT(TokenizeOnNewConnection(*env, **server, "pos"), IsOk());
}

TEST(RevocationTest, ExpiringCrlIsAlertedAndAnExpiredOneRefusesItsCaClearly) {
  auto env = testing::TestEnv::Create();
  const std::string crl = env->dir() + "/crl";
  testing::RunOrDie(absl::StrCat("CRL_VALID_SECONDS=8 " CARDVAULT_SOURCE_DIR
                                 "/deploy/revoke-cert.sh --empty ",
                                 env->dir(), "/ca ", crl, " >/dev/null"));
  FastTrustChanges(*env, crl);
  env->AddToConfig("metrics", "interval_seconds: 1");
  const std::string log = env->dir() + "/server.log";
  auto server = testing::ServerProcess::Start(env->config_path(), log);
  ASSERT_THAT(server, IsOk());
  EXPECT_THAT(TokenizeOnNewConnection(*env, **server, "pos"), IsOk());
  // Days before (here: seconds), an ALERT and the metric say so.
  EXPECT_THAT(testing::ReadFileOrEmpty(log),
              HasSubstr("publish a new CRL before then"));
  const std::string metrics = env->dir() + "/cardvault.prom";
  EXPECT_TRUE(Eventually(absl::Seconds(3), [&] {
    const std::string m = testing::ReadFileOrEmpty(metrics);
    for (int s = 0; s <= 8; ++s) {
      if (absl::StrContains(
              m, absl::StrCat("cardvault_client_crl_seconds_until_expiry ", s,
                              "\n"))) {
        return true;
      }
    }
    return false;
  }));
  // Expired: the CA's clients are refused, with the reason in the log.
  EXPECT_TRUE(Eventually(absl::Seconds(12), [&] {
    return absl::IsUnavailable(TokenizeOnNewConnection(*env, **server, "pos"));
  }));
  EXPECT_TRUE(Eventually(absl::Seconds(3), [&] {
    const std::string l = testing::ReadFileOrEmpty(log);
    return absl::StrContains(l, "expired at") &&
           absl::StrContains(
               l, "its clients are refused until a current CRL is installed");
  }));
  // A new CRL brings them back without a restart.
  env->Revoke("auditor");
  EXPECT_TRUE(Eventually(absl::Seconds(5), [&] {
    return TokenizeOnNewConnection(*env, **server, "pos").ok();
  }));
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
