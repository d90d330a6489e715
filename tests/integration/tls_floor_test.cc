// PCI DSS 4.2.1, protocol floor: cardvaultd negotiates TLS 1.2 only with
// ECDHE and an AEAD cipher, or TLS 1.3, and accepts only client certificates
// within their validity period and issued for client authentication. The
// handshakes are driven by `openssl s_client` against a real cardvaultd, with
// the client side opened up (@SECLEVEL=0) so that every refusal is the
// server's; a permissive `openssl s_server` shows those probes can succeed.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
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
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

// What one `openssl s_client` run saw.
struct Handshake {
  // The client finished its side of the handshake.
  bool established = false;
  // The server finished its side too: in TLS 1.2 its Finished (sent only
  // after it verified our certificate) completes the client's side; in TLS
  // 1.3 the client finishes first, so this needs the server's
  // NewSessionTicket, which OpenSSL sends only after accepting our Finished.
  bool server_accepted = false;
  // The server sent any TLS record at all (a ServerHello, an alert).
  bool server_answered = false;
  // The client sent a ClientHello (so a refusal is not the client's own).
  bool client_hello_sent = false;
  std::string protocol;  // e.g. "TLSv1.2", "" if not established
  std::string cipher;    // e.g. "ECDHE-ECDSA-AES128-GCM-SHA256"
  std::string output;
};

std::ostream& operator<<(std::ostream& os, const Handshake& h) {
  return os << "established=" << h.established
            << " server_accepted=" << h.server_accepted
            << " server_answered=" << h.server_answered
            << " protocol=" << h.protocol << " cipher=" << h.cipher
            << "\n--- s_client:\n"
            << h.output;
}

std::string Quoted(absl::string_view s) { return absl::StrCat("'", s, "'"); }

// Runs `openssl s_client` against `address` presenting pki/CERT.crt. With
// `linger`, stdin stays open that long so post-handshake messages (TLS 1.3
// session tickets) can arrive; otherwise the client leaves once it is done.
Handshake Probe(const testing::TestEnv& env, const std::string& address,
                absl::string_view cert, absl::string_view args,
                absl::Duration linger = absl::ZeroDuration()) {
  static int probe_count = 0;
  const std::string out =
      absl::StrCat(env.dir(), "/s_client.", ++probe_count, ".out");
  const std::string input =
      linger > absl::ZeroDuration()
          ? absl::StrCat("(sleep ", absl::ToDoubleSeconds(linger), ") | ")
          : "";
  const std::string command = absl::StrCat(
      input, "openssl s_client -connect ", address, " -CAfile ",
      env.pki("ca.crt"), " -cert ", env.pki(absl::StrCat(cert, ".crt")),
      " -key ", env.pki(absl::StrCat(cert, ".key")),
      " -verify_return_error -brief -msg -alpn h2 ", args,
      linger > absl::ZeroDuration() ? "" : " </dev/null", " >", out, " 2>&1");
  // s_client's exit status is 1 whenever the server closes without
  // close_notify, as gRPC does even after a good handshake: the output tells.
  (void)std::system(command.c_str());
  Handshake h;
  h.output = testing::ReadFileOrEmpty(out);
  for (absl::string_view line : absl::StrSplit(h.output, '\n')) {
    if (line == "CONNECTION ESTABLISHED") h.established = true;
    if (absl::StartsWith(line, "<<< ")) h.server_answered = true;
    if (absl::StartsWith(line, ">>> ") && absl::EndsWith(line, "ClientHello")) {
      h.client_hello_sent = true;
    }
    if (absl::StartsWith(line, "<<< ") &&
        absl::EndsWith(line, "NewSessionTicket")) {
      h.server_accepted = true;  // TLS 1.3's evidence; see below for 1.2
    }
    if (absl::ConsumePrefix(&line, "Protocol version: ")) {
      h.protocol = std::string(line);
    }
    if (absl::ConsumePrefix(&line, "Ciphersuite: ")) {
      h.cipher = std::string(line);
    }
  }
  if (h.protocol != "TLSv1.3") h.server_accepted = h.established;
  return h;
}

// `openssl ciphers -v` columns of a TLS 1.2 suite: "Kx=ECDH", "Mac=AEAD"...
std::vector<std::string> CipherTraits(const testing::TestEnv& env,
                                      absl::string_view suite) {
  const std::string out = env.dir() + "/ciphers.out";
  testing::RunOrDie(absl::StrCat("openssl ciphers -v -ciphersuites '' ",
                                 Quoted(absl::StrCat(suite, ":@SECLEVEL=0")),
                                 " >", out));
  for (absl::string_view line :
       absl::StrSplit(testing::ReadFileOrEmpty(out), '\n')) {
    std::vector<std::string> fields =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (!fields.empty() && fields[0] == suite) return fields;
  }
  return {};
}

// gRPC drops the alert OpenSSL queues for a refused handshake and closes the
// connection, so a refusal reads as "ClientHello sent, nothing came back"
// plus gRPC's log line naming OpenSSL's reason.
void ExpectRefusedWithoutAnswer(const Handshake& h) {
  EXPECT_TRUE(h.client_hello_sent) << h;
  EXPECT_FALSE(h.server_answered) << h;
  EXPECT_FALSE(h.established) << h;
}

// UTC time as `openssl ca -startdate/-enddate` (and make-pki.sh) take it.
std::string CertTime(absl::Time t) {
  return absl::FormatTime("%Y%m%d%H%M%SZ", t, absl::UTCTimeZone());
}

class TlsFloorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    env_ = testing::TestEnv::Create().release();
    // All for the pos identity, which the policy binds as TOKENIZER, so a
    // refusal can only come from the certificate's dates or purpose.
    const absl::Time now = absl::Now();
    IssueDated("expired-pos", now - absl::Hours(48), now - absl::Hours(24));
    IssueDated("future-pos", now + absl::Hours(24), now + absl::Hours(48));
    // The dated issuing path (openssl ca) with good dates: the control.
    IssueDated("dated-pos", now - absl::Hours(1), now + absl::Hours(24));
    testing::RunOrDie(absl::StrCat(
        CARDVAULT_SOURCE_DIR "/deploy/make-pki.sh --client server-auth-pos ",
        testing::TestEnv::Identity("pos"), " ", env_->pki(""), " ", env_->dir(),
        "/ca --eku serverAuth >/dev/null"));
    log_path_ = new std::string(env_->dir() + "/server.log");
    auto server =
        testing::ServerProcess::Start(env_->config_path(), *log_path_);
    if (!server.ok()) {
      ADD_FAILURE() << server.status();
      return;
    }
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete env_;
    delete log_path_;
  }
  void SetUp() override { ASSERT_NE(server_, nullptr); }

  static void IssueDated(absl::string_view name, absl::Time not_before,
                         absl::Time not_after) {
    testing::RunOrDie(absl::StrCat(
        CARDVAULT_SOURCE_DIR "/deploy/make-pki.sh --client ", name, " ",
        testing::TestEnv::Identity("pos"), " ", env_->pki(""), " ", env_->dir(),
        "/ca --not-before ", CertTime(not_before), " --not-after ",
        CertTime(not_after), " >/dev/null"));
  }

  static Handshake ProbeVault(absl::string_view args,
                              absl::string_view cert = "pos",
                              absl::Duration linger = absl::ZeroDuration()) {
    return Probe(*env_, server_->address(), cert, args, linger);
  }

  static size_t LogSize() {
    return testing::ReadFileOrEmpty(*log_path_).size();
  }
  static std::string LogSince(size_t offset) {
    const std::string log = testing::ReadFileOrEmpty(*log_path_);
    return log.size() > offset ? log.substr(offset) : "";
  }
  // Whether the server logged `reason` (gRPC's "Handshake failed with fatal
  // error ...: <reason>") after `offset`; the line may lag the refusal.
  static bool ServerLogged(size_t offset, absl::string_view reason) {
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (true) {
      if (absl::StrContains(LogSince(offset), reason)) return true;
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(20));
    }
  }

  // Why `openssl verify` rejects pki/NAME.crt as a TLS client certificate
  // ("" if it accepts it): shows the fixture has the defect it is named for.
  static std::string VerifyError(absl::string_view name) {
    const std::string out = env_->dir() + "/verify.out";
    (void)std::system(absl::StrCat("openssl verify -purpose sslclient -CAfile ",
                                   env_->pki("ca.crt"), " ",
                                   env_->pki(absl::StrCat(name, ".crt")), " >",
                                   out, " 2>&1")
                          .c_str());
    const std::string text = testing::ReadFileOrEmpty(out);
    return absl::StrContains(text, ": OK") ? "" : text;
  }

  static absl::Status TokenizeAs(absl::string_view cert) {
    auto client = client::VaultClient::Create(
        testing::ClientOptionsFor(*env_, server_->address(), cert));
    if (!client.ok()) return client.status();
    v1::Card card;
    card.set_pan("4111111111111111");
    return (*client)->Tokenize(card).status();
  }

  // A certificate of the pos identity that the server must refuse: the gRPC
  // call fails and neither TLS 1.2 nor TLS 1.3 handshake gets past the
  // server's certificate check.
  static void ExpectCertificateRefused(absl::string_view cert) {
    size_t offset = LogSize();
    const Handshake tls12 = ProbeVault("-tls1_2", cert);
    EXPECT_TRUE(tls12.client_hello_sent) << tls12;
    EXPECT_FALSE(tls12.established) << tls12;
    EXPECT_TRUE(ServerLogged(offset, "certificate verify failed")) << tls12;

    offset = LogSize();
    const Handshake tls13 = ProbeVault("-tls1_3", cert, absl::Seconds(1));
    EXPECT_FALSE(tls13.server_accepted) << tls13;
    EXPECT_TRUE(ServerLogged(offset, "certificate verify failed")) << tls13;

    // Last: gRPC may retry the connection in the background for a while.
    offset = LogSize();
    EXPECT_THAT(TokenizeAs(cert), StatusIs(absl::StatusCode::kUnavailable));
    EXPECT_TRUE(ServerLogged(offset, "certificate verify failed"));
  }

  // Offers each of `suites` alone over TLS 1.2: the server answers nothing
  // and logs that it shares no cipher with the client.
  static void ExpectSuitesRefused(const std::vector<std::string>& suites) {
    for (const std::string& suite : suites) {
      SCOPED_TRACE(suite);
      const size_t offset = LogSize();
      const Handshake h = ProbeVault(
          absl::StrCat("-tls1_2 -cipher ", Quoted(suite + ":@SECLEVEL=0")));
      ExpectRefusedWithoutAnswer(h);
      EXPECT_TRUE(ServerLogged(offset, "no shared cipher")) << h;
    }
  }

  static testing::TestEnv* env_;
  static std::string* log_path_;
  static testing::ServerProcess* server_;
};

testing::TestEnv* TlsFloorTest::env_ = nullptr;
std::string* TlsFloorTest::log_path_ = nullptr;
testing::ServerProcess* TlsFloorTest::server_ = nullptr;

TEST_F(TlsFloorTest, Tls10IsRefused) {
  const size_t offset = LogSize();
  const Handshake h = ProbeVault("-tls1 -cipher 'DEFAULT:@SECLEVEL=0'");
  ExpectRefusedWithoutAnswer(h);
  EXPECT_THAT(h.output, HasSubstr(">>> TLS 1.0, Handshake"));
  EXPECT_TRUE(ServerLogged(offset, "unsupported protocol")) << h;
}

TEST_F(TlsFloorTest, Tls11IsRefused) {
  const size_t offset = LogSize();
  const Handshake h = ProbeVault("-tls1_1 -cipher 'DEFAULT:@SECLEVEL=0'");
  ExpectRefusedWithoutAnswer(h);
  EXPECT_THAT(h.output, HasSubstr(">>> TLS 1.1, Handshake"));
  EXPECT_TRUE(ServerLogged(offset, "unsupported protocol")) << h;
}

// The probes above and below are not refused on the client side: against a
// server that allows them, the same client completes TLS 1.0, TLS 1.1 and a
// CBC suite.
TEST_F(TlsFloorTest, ProbesNegotiateOldProtocolsAndCbcWhereAServerAllows) {
  const int port = testing::PickUnusedPort();
  const std::string address = absl::StrCat("127.0.0.1:", port);
  const std::string log = env_->dir() + "/s_server.log";
  const std::string cert = env_->pki("server.crt");
  const std::string key = env_->pki("server.key");
  int stdin_pipe[2];
  ASSERT_EQ(pipe(stdin_pipe), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // s_server quits at the end of its input, so stdin is a pipe kept open.
    dup2(stdin_pipe[0], STDIN_FILENO);
    close(stdin_pipe[1]);
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    execlp("openssl", "openssl", "s_server", "-accept", address.c_str(),
           "-cert", cert.c_str(), "-key", key.c_str(), "-cipher",
           "ALL:@SECLEVEL=0", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(stdin_pipe[0]);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!absl::StrContains(testing::ReadFileOrEmpty(log), "ACCEPT") &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }

  const Handshake tls10 =
      Probe(*env_, address, "pos", "-tls1 -cipher 'DEFAULT:@SECLEVEL=0'");
  EXPECT_TRUE(tls10.established) << tls10;
  EXPECT_EQ(tls10.protocol, "TLSv1") << tls10;
  const Handshake tls11 =
      Probe(*env_, address, "pos", "-tls1_1 -cipher 'DEFAULT:@SECLEVEL=0'");
  EXPECT_TRUE(tls11.established) << tls11;
  EXPECT_EQ(tls11.protocol, "TLSv1.1") << tls11;
  const Handshake cbc = Probe(*env_, address, "pos",
                              "-tls1_2 -cipher 'ECDHE-ECDSA-AES128-SHA:"
                              "@SECLEVEL=0'");
  EXPECT_TRUE(cbc.established) << cbc;
  EXPECT_EQ(cbc.cipher, "ECDHE-ECDSA-AES128-SHA") << cbc;

  close(stdin_pipe[1]);
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

TEST_F(TlsFloorTest, Tls12WithEcdheAndAeadIsAccepted) {
  for (const char* suite :
       {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"}) {
    const Handshake h = ProbeVault(absl::StrCat("-tls1_2 -cipher ", suite));
    EXPECT_TRUE(h.server_accepted) << h;
    EXPECT_EQ(h.protocol, "TLSv1.2") << h;
    EXPECT_EQ(h.cipher, suite) << h;
  }
}

// The server key is EC P-256, so suites that need an RSA certificate (kRSA,
// DHE-RSA) could not be chosen with any cipher list; the CBC refusals and
// the enumeration below are what show the list itself.
TEST_F(TlsFloorTest, Tls12StaticRsaKeyExchangeIsRefused) {
  // No forward secrecy (kRSA), though AEAD.
  ExpectSuitesRefused({"AES128-GCM-SHA256", "AES256-GCM-SHA384"});
}

TEST_F(TlsFloorTest, Tls12CbcSuitesAreRefused) {
  // ECDHE with the server's ECDSA key, but CBC with HMAC instead of AEAD.
  ExpectSuitesRefused({"ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384",
                       "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA"});
}

TEST_F(TlsFloorTest, Tls12DheAndOtherNonEcdheSuitesAreRefused) {
  // Finite-field DHE, and static RSA with CBC.
  ExpectSuitesRefused({"DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
                       "AES128-SHA", "AES256-SHA256"});
}

// Every TLS 1.2 suite this OpenSSL can offer is on the table; each round
// removes the one the server chose, until it refuses the rest. What it chose
// must all be ECDHE key exchange with an AEAD cipher.
TEST_F(TlsFloorTest, Tls12AcceptsOnlyEcdheWithAead) {
  std::vector<std::string> accepted;
  bool refused_the_rest = false;
  for (int round = 0; round < 20 && !refused_the_rest; ++round) {
    std::string offer = "ALL:COMPLEMENTOFALL";
    for (const std::string& suite : accepted) {
      absl::StrAppend(&offer, ":!", suite);
    }
    absl::StrAppend(&offer, ":@SECLEVEL=0");
    const size_t offset = LogSize();
    const Handshake h =
        ProbeVault(absl::StrCat("-tls1_2 -cipher ", Quoted(offer)));
    if (h.server_accepted) {
      ASSERT_EQ(h.protocol, "TLSv1.2") << h;
      ASSERT_THAT(accepted, Not(Contains(h.cipher))) << h;
      accepted.push_back(h.cipher);
    } else {
      ExpectRefusedWithoutAnswer(h);
      EXPECT_TRUE(ServerLogged(offset, "no shared cipher")) << h;
      refused_the_rest = true;
    }
  }
  EXPECT_TRUE(refused_the_rest) << absl::StrJoin(accepted, " ");
  EXPECT_THAT(accepted, Contains("ECDHE-ECDSA-AES128-GCM-SHA256"));
  for (const std::string& suite : accepted) {
    EXPECT_THAT(CipherTraits(*env_, suite), Contains("Kx=ECDH")) << suite;
    EXPECT_THAT(CipherTraits(*env_, suite), Contains("Mac=AEAD")) << suite;
  }
  std::cout << "TLS 1.2 suites accepted: " << absl::StrJoin(accepted, " ")
            << "\n";
}

TEST_F(TlsFloorTest, Tls13IsAccepted) {
  const Handshake h = ProbeVault("-tls1_3", "pos", absl::Seconds(1));
  EXPECT_TRUE(h.server_accepted) << h;
  EXPECT_EQ(h.protocol, "TLSv1.3") << h;
  EXPECT_THAT(h.cipher, Not(IsEmpty())) << h;
}

// The controls for the refusals below: certificates of the same identity,
// from both issuing paths of make-pki.sh, work over gRPC, TLS 1.2 and 1.3.
TEST_F(TlsFloorTest, ValidCertificatesOfTheSameIdentityAreAccepted) {
  for (const char* cert : {"pos", "dated-pos"}) {
    SCOPED_TRACE(cert);
    EXPECT_EQ(VerifyError(cert), "");
    const size_t offset = LogSize();
    const Handshake tls12 = ProbeVault("-tls1_2", cert);
    EXPECT_TRUE(tls12.server_accepted) << tls12;
    const Handshake tls13 = ProbeVault("-tls1_3", cert, absl::Seconds(1));
    EXPECT_TRUE(tls13.server_accepted) << tls13;
    EXPECT_THAT(TokenizeAs(cert), IsOk());
    EXPECT_THAT(LogSince(offset), Not(HasSubstr("Handshake failed")));
  }
}

TEST_F(TlsFloorTest, ExpiredClientCertificateIsRefused) {
  EXPECT_THAT(VerifyError("expired-pos"), HasSubstr("certificate has expired"));
  ExpectCertificateRefused("expired-pos");
}

TEST_F(TlsFloorTest, NotYetValidClientCertificateIsRefused) {
  EXPECT_THAT(VerifyError("future-pos"),
              HasSubstr("certificate is not yet valid"));
  ExpectCertificateRefused("future-pos");
}

TEST_F(TlsFloorTest, ServerAuthOnlyClientCertificateIsRefused) {
  EXPECT_THAT(VerifyError("server-auth-pos"),
              HasSubstr("unsuitable certificate purpose"));
  ExpectCertificateRefused("server-auth-pos");
}

TEST_F(TlsFloorTest, ServerRefusesToStartWithACipherListFromTheEnvironment) {
  // gRPC would take GRPC_SSL_CIPHER_SUITES over its ECDHE+AEAD list.
  setenv("GRPC_SSL_CIPHER_SUITES", "ECDHE-ECDSA-AES128-SHA", 1);
  auto server = testing::ServerProcess::Start(env_->config_path(),
                                              env_->dir() + "/cipher-env.log");
  unsetenv("GRPC_SSL_CIPHER_SUITES");
  EXPECT_THAT(server.status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("GRPC_SSL_CIPHER_SUITES is set")));
}

}  // namespace
}  // namespace cardvault
