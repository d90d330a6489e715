// The audit trail through a real cardvaultd over mutual TLS: every call is
// recorded with the required fields, only auditors read it, reads are
// themselves recorded, and the chain verifies across restarts and kill -9.
#include <grpcpp/client_context.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "client/vault_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/clients.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_cards.h"
#include "tests/testing/test_env.h"

namespace cardvault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

class AuditEndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_ = testing::TestEnv::Create();
    env_->IssueClient("two-uris",
                      absl::StrCat(testing::TestEnv::Identity("pos"),
                                   ",URI:", testing::TestEnv::Identity("x")));
    env_->IssueClient("slow-processor",
                      testing::TestEnv::Identity("slow-processor"));
    env_->AddToPolicy(absl::StrCat(
        "bindings { identity: \"", testing::TestEnv::Identity("slow-processor"),
        "\" roles: DETOKENIZER detokenize_domains: \"dev-merchant/pos\" "
        "detokenize_limit { per_day: 1 } }"));
    env_->AddToConfig("metrics", "interval_seconds: 1");
    log_ = env_->dir() + "/server.log";
    StartServer();
  }
  void StartServer() {
    auto server =
        testing::ServerProcess::Start(env_->config_path(), log_, port_);
    ASSERT_THAT(server, IsOk());
    server_ = *std::move(server);
    port_ = server_->port();
  }
  std::unique_ptr<client::VaultClient> Client(absl::string_view name) {
    return testing::ClientFor(*env_, server_->address(), name);
  }
  std::vector<v1::AuditEvent> AllEvents() {
    std::vector<v1::AuditEvent> out;
    EXPECT_THAT(Client("auditor")->ListAuditEvents(
                    v1::ListEventsRequest(),
                    [&](const v1::AuditEvent& e) { out.push_back(e); }),
                IsOk());
    return out;
  }
  // `openssl x509 <flags>` of pki/NAME.crt, as the audit trail spells it:
  // serial without leading zero bytes, fingerprint as lowercase hex.
  std::string Openssl(const std::string& name, const std::string& flags) {
    const std::string out = env_->dir() + "/openssl.out";
    testing::RunOrDie(absl::StrCat("openssl x509 -noout ", flags, " -in ",
                                   env_->pki(name + ".crt"), " >", out));
    std::string value(
        absl::StripAsciiWhitespace(testing::ReadFileOrEmpty(out)));
    value = value.substr(value.find('=') + 1);
    if (flags == "-serial") {
      while (absl::StartsWith(value, "00")) value = value.substr(2);
      return value;
    }
    value = absl::StrReplaceAll(value, {{":", ""}});
    return absl::AsciiStrToLower(value);
  }

  // `metric` summed over every node's metrics file; -1 while a file lacks
  // it.
  int64_t MetricSum(absl::string_view metric) {
    int64_t sum = 0;
    for (const std::string& file : env_->metrics_files()) {
      int64_t value = -1;
      for (absl::string_view line :
           absl::StrSplit(testing::ReadFileOrEmpty(file), '\n')) {
        if (absl::ConsumePrefix(&line, absl::StrCat(metric, " ")) &&
            !absl::SimpleAtoi(line, &value)) {
          value = -1;
        }
      }
      if (value < 0) return -1;
      sum += value;
    }
    return sum;
  }

  static v1::Card Card(const std::string& pan) {
    v1::Card c;
    c.set_pan(pan);
    return c;
  }

  std::unique_ptr<testing::TestEnv> env_;
  std::string log_;
  int port_ = 0;
  std::unique_ptr<testing::ServerProcess> server_;
};

TEST_F(AuditEndToEndTest, ScriptedMixOfCallsYieldsExactlyOneRecordEach) {
  const std::vector<std::string> pans = testing::MakePans(6, 99);
  auto pos = Client("pos");
  auto processor = Client("processor");
  auto auditor = Client("auditor");
  auto two_uris = Client("two-uris");
  const size_t before = AllEvents().size();  // start + that read
  int calls = 0;
  std::vector<std::string> tokens;
  for (const std::string& pan : pans) {  // 6 ok
    tokens.push_back(*pos->Tokenize(Card(pan)));
    ++calls;
  }
  for (const std::string& t : tokens) {  // 6 ok
    ASSERT_THAT(processor->Detokenize(t, "authorization"), IsOk());
    ++calls;
  }
  EXPECT_THAT(pos->Detokenize(tokens[0], "authorization"),  // denied
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(auditor->Tokenize(Card(pans[0])),  // denied
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(pos->Tokenize(Card("4111111111111112")),  // invalid
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      processor->Detokenize("tok_aaaaaaaaaaaaaaaaaaaaaaaaaa", "authorization"),
      StatusIs(absl::StatusCode::kNotFound));     // unknown token
  EXPECT_THAT(two_uris->Tokenize(Card(pans[1])),  // no single identity
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(processor->VerifyAuditChain(),  // audit read, denied
              StatusIs(absl::StatusCode::kPermissionDenied));
  auto slow = Client("slow-processor");
  EXPECT_THAT(slow->Detokenize(tokens[1], "refund"), IsOk());
  EXPECT_THAT(slow->Detokenize(tokens[1], "refund"),  // over its limit
              StatusIs(absl::StatusCode::kResourceExhausted));
  calls += 8;

  const std::vector<v1::AuditEvent> events = AllEvents();
  // Exactly one record per call, plus the two reads of the trail.
  ASSERT_EQ(events.size(), before + calls + 1);
  for (size_t i = 0; i < events.size(); ++i) {
    const v1::AuditEvent& e = events[i];
    SCOPED_TRACE(absl::StrCat("sequence ", e.sequence()));
    EXPECT_EQ(e.sequence(), i + 1);
    EXPECT_GT(e.event_time().seconds(), 0);
    EXPECT_NE(e.event_type(), v1::EVENT_TYPE_UNSPECIFIED);
    if (e.event_type() == v1::SERVER_START || e.event_type() == v1::KEY_EVENT ||
        e.event_type() == v1::LEASE) {
      EXPECT_EQ(e.identity(), "cardvaultd");
      continue;
    }
    EXPECT_THAT(e.rpc(), StartsWith("/cardvault.v1."));
    EXPECT_THAT(e.peer_address(), HasSubstr("127.0.0.1"));
    EXPECT_FALSE(e.request_id().empty());
    if (e.status_code() !=
        static_cast<int>(absl::StatusCode::kUnauthenticated)) {
      EXPECT_THAT(e.identity(), StartsWith("spiffe://cardvault.test/"));
      // The very certificate presented, as openssl sees it.
      const std::string name =
          e.identity().substr(std::string("spiffe://cardvault.test/").size());
      EXPECT_EQ(e.certificate_serial(), Openssl(name, "-serial"));
      EXPECT_EQ(e.certificate_sha256(), Openssl(name, "-fingerprint -sha256"));
    }
    const std::string bytes = e.SerializeAsString();
    for (const std::string& pan : pans) {
      ASSERT_THAT(bytes, Not(HasSubstr(pan)));
    }
  }
  // Spot checks of outcomes, in call order after the first read.
  const v1::AuditEvent& first_tokenize = events[before];
  EXPECT_EQ(first_tokenize.event_type(), v1::TOKENIZE);
  EXPECT_EQ(first_tokenize.identity(), testing::TestEnv::Identity("pos"));
  EXPECT_EQ(first_tokenize.token(), tokens[0]);
  EXPECT_EQ(first_tokenize.status_code(), 0);
  const v1::AuditEvent& denied = events[before + 12];
  EXPECT_EQ(denied.event_type(), v1::DETOKENIZE);
  EXPECT_EQ(denied.status_code(),
            static_cast<int>(absl::StatusCode::kPermissionDenied));
  const v1::AuditEvent& unidentified = events[before + 16];
  EXPECT_EQ(unidentified.status_code(),
            static_cast<int>(absl::StatusCode::kUnauthenticated));
  EXPECT_TRUE(unidentified.identity().empty());
  const v1::AuditEvent& over_limit = events[before + 19];
  EXPECT_EQ(over_limit.identity(),
            testing::TestEnv::Identity("slow-processor"));
  EXPECT_EQ(over_limit.status_code(),
            static_cast<int>(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(over_limit.purpose(), "refund");
  EXPECT_EQ(over_limit.token(), tokens[1]);

  // The counter an alert watches (Prometheus text file, rewritten each second).
  bool counted = false;
  if (testing::OnPostgres()) {
    // A file per node: the denial is counted once, by the node that made it.
    for (int i = 0; i < 50 && !counted; ++i) {
      counted = MetricSum("cardvault_detokenize_velocity_denials_total") == 1;
      if (!counted) absl::SleepFor(absl::Milliseconds(100));
    }
    EXPECT_TRUE(counted)
        << testing::ReadFileOrEmpty(env_->dir() + "/cardvault.prom")
        << testing::ReadFileOrEmpty(env_->metrics_files().back());
    return;
  }
  for (int i = 0; i < 50 && !counted; ++i) {
    counted = absl::StrContains(
        testing::ReadFileOrEmpty(env_->dir() + "/cardvault.prom"),
        "cardvault_detokenize_velocity_denials_total 1\n");
    if (!counted) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(counted) << testing::ReadFileOrEmpty(env_->dir() +
                                                   "/cardvault.prom");
}

TEST_F(AuditEndToEndTest,
       PolicyChangeAppliesWithoutRestartAndBadFileIsRefused) {
  env_->IssueClient("late-pos", testing::TestEnv::Identity("late-pos"));
  auto late = Client("late-pos");
  EXPECT_THAT(late->Tokenize(Card("4111111111111111")),
              StatusIs(absl::StatusCode::kPermissionDenied));
  env_->AddToPolicy(absl::StrCat(
      "bindings { identity: \"", testing::TestEnv::Identity("late-pos"),
      "\" roles: TOKENIZER tokenize_domains: \"dev-merchant/pos\" }"));
  // The server re-reads the file every 2 s by default.
  absl::Status last;
  for (int i = 0; i < 100; ++i) {
    last = late->Tokenize(Card("4111111111111111")).status();
    if (last.ok()) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_THAT(last, IsOk());
  const pid_t pid = server_->pid();

  // A malformed edit is refused; the policy in force keeps serving.
  env_->AddToPolicy("bindings { identity: ");
  bool refused = false;
  for (int i = 0; i < 100 && !refused; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    for (const auto& e : AllEvents()) {
      refused |= e.event_type() == v1::POLICY_RELOAD && e.status_code() != 0;
    }
  }
  EXPECT_TRUE(refused);
  EXPECT_THAT(late->Tokenize(Card("4111111111111111")), IsOk());
  EXPECT_THAT(testing::ReadFileOrEmpty(log_),
              HasSubstr("policy reload refused"));
  EXPECT_EQ(server_->pid(), pid);  // no restart
}

TEST_F(AuditEndToEndTest, OnlyAuditorsReadTheTrail) {
  for (const char* name : {"pos", "processor", "admin"}) {
    SCOPED_TRACE(name);
    auto client = Client(name);
    EXPECT_THAT(client->ListAuditEvents(v1::ListEventsRequest(),
                                        [](const v1::AuditEvent&) {}),
                StatusIs(absl::StatusCode::kPermissionDenied));
    EXPECT_THAT(client->VerifyAuditChain(),
                StatusIs(absl::StatusCode::kPermissionDenied));
  }
  auto report = Client("auditor")->VerifyAuditChain();
  ASSERT_THAT(report, IsOk());
  EXPECT_TRUE(report->intact()) << report->problem();
  // start, 6 key creations, the background lease, 6 denied reads, this
  // verify; and the second node's start on PostgreSQL
  EXPECT_EQ(report->head().sequence(), 15u + (server_->node_count() - 1));
  EXPECT_EQ(report->head().mac().size(), 32u);
}

TEST_F(AuditEndToEndTest, ChainSurvivesRestartAndKill9) {
  auto pos = Client("pos");
  ASSERT_THAT(pos->Tokenize(Card("4111111111111111")), IsOk());
  ASSERT_EQ(WEXITSTATUS(server_->Terminate()), 0);
  StartServer();
  ASSERT_THAT(Client("pos")->Tokenize(Card("5555555555554444")), IsOk());
  server_->Kill9();
  StartServer();
  auto report = Client("auditor")->VerifyAuditChain();
  ASSERT_THAT(report, IsOk());
  EXPECT_TRUE(report->intact()) << report->problem();
  std::vector<v1::EventType> types;
  // On PostgreSQL the second node's starts and stop are counted apart (they
  // interleave with the first node's records); it records nothing else of
  // its own: the first node made the keys and holds the lease throughout.
  const std::string second_node = server_->node_count() > 1
                                      ? absl::StrCat(":", server_->node_port(1))
                                      : std::string();
  int second_node_starts = 0, second_node_stops = 0;
  for (const auto& e : AllEvents()) {
    if (!second_node.empty() && absl::EndsWith(e.node(), second_node)) {
      if (e.event_type() == v1::SERVER_START) {
        ++second_node_starts;
        continue;
      }
      if (e.event_type() == v1::SERVER_STOP) {
        ++second_node_stops;
        continue;
      }
      EXPECT_NE(e.event_type(), v1::KEY_EVENT) << e.detail();
      EXPECT_NE(e.event_type(), v1::LEASE) << e.detail();
    }
    types.push_back(e.event_type());
  }
  if (!second_node.empty()) {
    EXPECT_EQ(second_node_starts, 3);
    EXPECT_EQ(second_node_stops, 1);
  }
  // Keys are created (and recorded) on the first start only.
  EXPECT_THAT(
      types,
      ::testing::ElementsAre(
          v1::SERVER_START, v1::KEY_EVENT, v1::KEY_EVENT, v1::KEY_EVENT,
          v1::KEY_EVENT, v1::KEY_EVENT, v1::KEY_EVENT, v1::LEASE, v1::TOKENIZE,
          v1::SERVER_STOP, v1::SERVER_START, v1::LEASE, v1::TOKENIZE,
          v1::SERVER_START, v1::LEASE, v1::VERIFY_CHAIN, v1::LIST_EVENTS));
  std::vector<std::string> details;
  for (const auto& e : AllEvents()) {
    if (e.event_type() == v1::KEY_EVENT) details.push_back(e.detail());
  }
  EXPECT_THAT(details, ::testing::ElementsAre(
                           HasSubstr("created KEK"), HasSubstr("data key dek/"),
                           HasSubstr("audit key"), HasSubstr("PAN index key"),
                           HasSubstr("fingerprint key"),
                           HasSubstr("operation key operation-mac/")));
}

TEST_F(AuditEndToEndTest, CliListsJsonLinesAndVerifies) {
  const std::string token = *Client("pos")->Tokenize(Card("4111111111111111"));
  const std::string cli =
      absl::StrCat(CARDVAULT_CLI_PATH, " --pki_dir=", env_->dir(),
                   "/pki --address=", server_->address());
  const std::string out = env_->dir() + "/audit.jsonl";
  testing::RunOrDie(
      absl::StrCat(cli, " audit list --token=", token, " >", out));
  const std::string lines = testing::ReadFileOrEmpty(out);
  // The Tokenize and the read's own record, each one JSON object per line.
  EXPECT_EQ(std::count(lines.begin(), lines.end(), '\n'), 2);
  EXPECT_THAT(lines, HasSubstr("\"event_type\":\"TOKENIZE\""));
  EXPECT_THAT(lines, HasSubstr(absl::StrCat("\"token\":\"", token, "\"")));
  EXPECT_THAT(lines, Not(HasSubstr("4111111111111111")));
  testing::RunOrDie(absl::StrCat(cli, " audit verify >", out));
  EXPECT_THAT(testing::ReadFileOrEmpty(out), HasSubstr("\"intact\":true"));
}

TEST_F(AuditEndToEndTest, LoggedCheckpointVerifiesAndAForgedOneDoesNot) {
  ASSERT_THAT(Client("pos")->Tokenize(Card("4111111111111111")), IsOk());
  // The first write after start logs "audit checkpoint: sequence=1 mac=HEX".
  const std::string log = testing::ReadFileOrEmpty(log_);
  const size_t at = log.find("audit checkpoint: sequence=1 mac=");
  ASSERT_NE(at, std::string::npos);
  const std::string mac_hex = log.substr(at + 33, 64);
  const std::string cli =
      absl::StrCat(CARDVAULT_CLI_PATH, " --pki_dir=", env_->dir(),
                   "/pki --address=", server_->address());
  EXPECT_EQ(std::system(absl::StrCat(cli, " audit verify --checkpoint=1:",
                                     mac_hex, " >/dev/null")
                            .c_str()),
            0);
  std::string forged = mac_hex;
  forged[0] = forged[0] == '0' ? '1' : '0';
  const int rc = std::system(
      absl::StrCat(cli, " audit verify --checkpoint=1:", forged, " >/dev/null")
          .c_str());
  EXPECT_EQ(WEXITSTATUS(rc), 3);  // chain not intact against the checkpoint
}

}  // namespace
}  // namespace cardvault
