// End to end through a real cardvaultd over mutual TLS, with its KEK in a real
// SoftHSM2 token and its records in RocksDB (or, with CARDVAULT_TEST_POSTGRES,
// in PostgreSQL behind two nodes that successive clients alternate between).
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <sys/wait.h>

#include <filesystem>
#include <mutex>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/health_check.h"
#include "client/vault_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/card_data_scan.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_cards.h"
#include "tests/testing/test_env.h"

namespace cardvault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;

constexpr int kCardCount = 1000;

// True if `regex` matches part of `text` (without printing `text`, which for
// /proc files is long).
bool RE2Like(const std::string& text, const std::string& regex) {
  return ::testing::Value(text, ::testing::ContainsRegex(regex));
}

class EndToEndTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // On PostgreSQL its log holds every statement with its bound values,
    // searched for card data by the last test.
    env_ =
        testing::TestEnv::Create({.log_postgres_statements = true}).release();
    env_->IssueClient("stranger", testing::TestEnv::Identity("stranger"));
    env_->IssueClient("cn-only", "-");
    env_->IssueClient("cn-tokenizer", "-");
    env_->IssueClient("two-uris",
                      absl::StrCat(testing::TestEnv::Identity("pos"),
                                   ",URI:", testing::TestEnv::Identity("x")));
    // A CN-only identity bound in a policy that allows CN identities proves
    // the CN fallback; "cn-only" is not bound and stays denied.
    env_->AddToPolicy("allow_common_name_identities: true");
    env_->IssueClient("lane-processor",
                      testing::TestEnv::Identity("lane-processor"));
    env_->AddToPolicy(absl::StrCat(
        "bindings { identity: \"", testing::TestEnv::Identity("lane-processor"),
        "\" roles: DETOKENIZER detokenize_domains: \"dev-merchant/pos\" }"));
    env_->AddToPolicy(
        "bindings { identity: \"cn:cn-tokenizer\" roles: TOKENIZER "
        "tokenize_domains: \"dev-merchant/pos\" }");
    foreign_pki_ = new std::string(env_->MakeForeignPki("foreign"));
    log_path_ = new std::string(env_->dir() + "/server.log");
    server_ = testing::ServerProcess::Start(env_->config_path(), *log_path_)
                  ->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete env_;
    delete foreign_pki_;
    delete log_path_;
  }

  static client::ClientOptions Options(absl::string_view identity,
                                       const std::string& pki = "") {
    const std::string dir = pki.empty() ? env_->pki("") : pki + "/";
    client::ClientOptions o;
    o.address = server_->address();
    o.ca_file = env_->pki("ca.crt");
    if (!identity.empty()) {
      o.cert_file = absl::StrCat(dir, identity, ".crt");
      o.key_file = absl::StrCat(dir, identity, ".key");
    }
    o.deadline = absl::Seconds(10);
    return o;
  }
  static std::unique_ptr<client::VaultClient> Client(
      absl::string_view identity) {
    return *client::VaultClient::Create(Options(identity));
  }

  static v1::Card CardFor(const std::string& pan, int i) {
    v1::Card card;
    card.set_pan(pan);
    if (i % 3 != 0) {
      card.set_exp_month(1 + i % 12);
      card.set_exp_year(2030 + i % 10);
    }
    if (i % 2 == 0) card.set_cardholder_name(absl::StrCat("HOLDER ", i));
    return card;
  }

  // Tokenizes the shared set of cards once (4 client threads), as pos.
  static const std::vector<std::pair<std::string, std::string>>& Tokenized() {
    static auto* tokenized = [] {
      auto* out = new std::vector<std::pair<std::string, std::string>>();
      const std::vector<std::string> pans = testing::MakePans(kCardCount, 42);
      out->resize(pans.size());
      auto pos = Client("pos");
      std::vector<std::thread> threads;
      for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
          for (size_t i = t; i < pans.size(); i += 4) {
            auto token = pos->Tokenize(CardFor(pans[i], i));
            (*out)[i] = {pans[i], token.ok() ? *token : ""};
          }
        });
      }
      for (auto& t : threads) t.join();
      return out;
    }();
    return *tokenized;
  }

  // On PostgreSQL, what the last test checks in RocksDB's directory: no
  // card number or cardholder name in any file of the database (stopped,
  // so that its checkpoint has written every page) nor in its log, where
  // every statement's bound values are, bytea decoded from hex; nor in the
  // nodes' output.
  static void ExpectNoCardDataInPostgres() {
    const auto& tokenized = Tokenized();
    testing::PostgresServer& pg = *env_->postgres();
    ASSERT_THAT(pg.Stop(), IsOk());
    const std::string pg_log = testing::ReadFileOrEmpty(pg.log_file());
    // The log does hold the statements and their values, tokens among them.
    EXPECT_THAT(pg_log, HasSubstr("parameters: $1 = "));
    const std::string decoded = testing::WithHexDecoded(pg_log);
    EXPECT_THAT(decoded, HasSubstr(tokenized[0].second));
    auto files = testing::ReadTree(pg.data_directory());
    ASSERT_GT(files.size(), 3u);
    files.emplace_back(pg.log_file(), pg_log);
    files.emplace_back(pg.log_file() + " (bytea decoded)", decoded);
    absl::flat_hash_set<std::string> pans = {"4111111111111111",
                                             "5555555555554444"};
    for (const auto& [pan, token] : tokenized) pans.insert(pan);
    for (const auto& [path, content] : files) {
      EXPECT_THAT(testing::DigitStringsIn(content, pans), IsEmpty()) << path;
      // Every cardholder name of the suite is "HOLDER <i>".
      EXPECT_THAT(content, Not(HasSubstr("HOLDER "))) << path;
    }
    const std::string log = testing::ReadFileOrEmpty(*log_path_);
    EXPECT_THAT(log, HasSubstr("cardvaultd ready"));
    EXPECT_THAT(testing::DigitStringsIn(log, pans), IsEmpty());
  }

  static testing::TestEnv* env_;
  static std::string* foreign_pki_;
  static std::string* log_path_;
  static testing::ServerProcess* server_;
};

testing::TestEnv* EndToEndTest::env_ = nullptr;
std::string* EndToEndTest::foreign_pki_ = nullptr;
std::string* EndToEndTest::log_path_ = nullptr;
testing::ServerProcess* EndToEndTest::server_ = nullptr;

TEST_F(EndToEndTest, ProcessorDetokenizesEveryCardThePosTokenized) {
  const auto& tokenized = Tokenized();
  ASSERT_EQ(tokenized.size(), static_cast<size_t>(kCardCount));
  std::set<std::string> tokens;
  int last_four_in_token = 0;
  auto processor = Client("processor");
  for (size_t i = 0; i < tokenized.size(); ++i) {
    const auto& [pan, token] = tokenized[i];
    ASSERT_THAT(token, StartsWith("tok_")) << "card " << i;
    tokens.insert(token);
    auto card = processor->Detokenize(token, "authorization");
    ASSERT_THAT(card, IsOk());
    const v1::Card want = CardFor(pan, i);
    EXPECT_EQ(card->pan(), want.pan());
    EXPECT_EQ(card->exp_month(), want.exp_month());
    EXPECT_EQ(card->exp_year(), want.exp_year());
    EXPECT_EQ(card->cardholder_name(), want.cardholder_name());
    EXPECT_EQ(token.find(pan), std::string::npos);
    // A RANDOM token (base32, a-z2-7) holds a card's last four only by
    // chance: about 3 runs in 1,000 see it once among 1,000 cards.
    last_four_in_token +=
        token.find(pan.substr(pan.size() - 4)) != std::string::npos;
  }
  EXPECT_LE(last_four_in_token, 2);
  EXPECT_EQ(tokens.size(), tokenized.size());
}

using Code = absl::StatusCode;

struct Access {
  const char* identity;
  Code tokenize;
  Code detokenize;
  Code list_events;
  Code verify_chain;
  Code token_info;
  Code delete_token;
  Code tokenize_batch;
  Code detokenize_batch;
  Code list_keys;
  Code list_operations;
};

// Deny by default: every identity x every RPC, in one table.
constexpr Code kOk = Code::kOk;
constexpr Code kDenied = Code::kPermissionDenied;
constexpr Code kNoId = Code::kUnauthenticated;
// Columns: Tokenize, Detokenize, ListEvents, VerifyChain, GetTokenInfo,
// DeleteToken, TokenizeBatch, DetokenizeBatch, ListKeys, ListOperations.
constexpr Access kAccessMatrix[] = {
    {"pos", kOk, kDenied, kDenied, kDenied, kOk, kOk, kOk, kDenied, kDenied,
     kDenied},
    {"processor", kDenied, kOk, kDenied, kDenied, kDenied, kDenied, kDenied,
     kOk, kDenied, kDenied},
    {"auditor", kDenied, kDenied, kOk, kOk, kOk, kDenied, kDenied, kDenied, kOk,
     kOk},
    {"admin", kDenied, kDenied, kDenied, kDenied, kDenied, kDenied, kDenied,
     kDenied, kOk, kOk},
    {"stranger", kDenied, kDenied, kDenied, kDenied, kDenied, kDenied, kDenied,
     kDenied, kDenied, kDenied},
    {"cn-only", kDenied, kDenied, kDenied, kDenied, kDenied, kDenied, kDenied,
     kDenied, kDenied, kDenied},
    // No URI SAN: the CN is the identity (the policy allows CN identities),
    // and this one is a tokenizer.
    {"cn-tokenizer", kOk, kDenied, kDenied, kDenied, kOk, kOk, kOk, kDenied,
     kDenied, kDenied},
    // Several URI SANs: no single identity, so nothing is served, even though
    // one of them is the pos identity.
    {"two-uris", kNoId, kNoId, kNoId, kNoId, kNoId, kNoId, kNoId, kNoId, kNoId,
     kNoId},
};

TEST_F(EndToEndTest, EachIdentityHasOnlyItsRolesRights) {
  // The test before may have used all of this second's 1,000 detokenizations
  // the dev policy grants the processor.
  absl::SleepFor(absl::Milliseconds(1100));
  const std::string token =
      *Client("pos")->Tokenize(CardFor("4111111111111111", 1));
  for (const Access& a : kAccessMatrix) {
    SCOPED_TRACE(a.identity);
    auto client = Client(a.identity);
    EXPECT_THAT(client->Tokenize(CardFor("5555555555554444", 1)),
                StatusIs(a.tokenize));
    EXPECT_THAT(client->Detokenize(token, "authorization"),
                StatusIs(a.detokenize));
    EXPECT_THAT(client->ListAuditEvents(v1::ListEventsRequest(),
                                        [](const v1::AuditEvent&) {}),
                StatusIs(a.list_events));
    EXPECT_THAT(client->VerifyAuditChain(), StatusIs(a.verify_chain));
    EXPECT_THAT(client->GetTokenInfo(token), StatusIs(a.token_info));
    // An unknown token: deleting it changes nothing for the next rows.
    EXPECT_THAT(client->DeleteToken("tok_aaaaaaaaaaaaaaaaaaaaaaaaaa"),
                StatusIs(a.delete_token));
    v1::TokenizeBatchRequest tbatch;
    *tbatch.add_requests()->mutable_card() = CardFor("5555555555554444", 1);
    EXPECT_THAT(client->TokenizeBatch(tbatch), StatusIs(a.tokenize_batch));
    v1::DetokenizeBatchRequest dbatch;
    dbatch.add_requests()->set_token(token);
    dbatch.mutable_requests(0)->set_purpose("authorization");
    EXPECT_THAT(client->DetokenizeBatch(dbatch), StatusIs(a.detokenize_batch));
    EXPECT_THAT(client->ListKeys(), StatusIs(a.list_keys));
    EXPECT_THAT(client->ListOperations(), StatusIs(a.list_operations));
  }
}

TEST_F(EndToEndTest, ProcessorOfOneDomainCannotDetokenizeAnother) {
  std::string domain;
  auto pos = Client("pos");
  const std::string web_token =
      *pos->Tokenize(CardFor("4111111111111111", 1), "dev-merchant/ecommerce");
  const std::string pos_token =
      *pos->Tokenize(CardFor("5555555555554444", 1), "dev-merchant/pos");
  auto lane_processor = Client("lane-processor");
  EXPECT_THAT(lane_processor->Detokenize(pos_token, "authorization", &domain),
              IsOk());
  EXPECT_EQ(domain, "dev-merchant/pos");
  // Indistinguishable from an unknown token.
  EXPECT_THAT(lane_processor->Detokenize(web_token, "authorization"),
              StatusIs(absl::StatusCode::kNotFound, "token not found"));
  // The processor of both domains may.
  EXPECT_THAT(Client("processor")->Detokenize(web_token, "refund", &domain),
              IsOk());
  EXPECT_EQ(domain, "dev-merchant/ecommerce");
  EXPECT_THAT(pos->Tokenize(CardFor("4111111111111111", 1), "other/pos"),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST_F(EndToEndTest, ClientWithoutCertificateIsRefusedAtHandshake) {
  auto channel = *client::CreateMutualTlsChannel(Options(""));
  EXPECT_FALSE(channel->WaitForConnected(
      absl::ToChronoTime(absl::Now() + absl::Seconds(3))));
  auto client = *client::VaultClient::Create(Options(""));
  EXPECT_THAT(client->Tokenize(CardFor("4111111111111111", 1)),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(EndToEndTest, CertificateFromAnotherCaIsRefusedAtHandshake) {
  // Same identities, same trust domain, but issued by a CA the server does
  // not trust.
  for (const char* identity : {"pos", "processor"}) {
    auto options = Options(identity, *foreign_pki_);
    auto channel = *client::CreateMutualTlsChannel(options);
    EXPECT_FALSE(channel->WaitForConnected(
        absl::ToChronoTime(absl::Now() + absl::Seconds(3))));
    auto client = *client::VaultClient::Create(options);
    EXPECT_THAT(client->Tokenize(CardFor("4111111111111111", 1)),
                StatusIs(absl::StatusCode::kUnavailable));
    EXPECT_THAT(
        client->Detokenize("tok_aaaaaaaaaaaaaaaaaaaaaaaaaa", "authorization"),
        StatusIs(absl::StatusCode::kUnavailable));
  }
}

TEST_F(EndToEndTest, ClientRefusesServerFromAnotherCa) {
  auto options = Options("pos");
  options.ca_file = *foreign_pki_ + "/ca.crt";
  auto client = *client::VaultClient::Create(options);
  EXPECT_THAT(client->Tokenize(CardFor("4111111111111111", 1)),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(EndToEndTest, PlaintextClientIsRefused) {
  auto channel = grpc::CreateChannel(server_->address(),
                                     grpc::InsecureChannelCredentials());
  EXPECT_FALSE(channel->WaitForConnected(
      absl::ToChronoTime(absl::Now() + absl::Seconds(3))));
}

struct WireCase {
  const char* label;
  v1::Card card;
  absl::StatusCode code;
  std::string secret;  // must not come back in the message
};

v1::Card Make(std::string pan, uint32_t month = 0, uint32_t year = 0,
              std::string name = "") {
  v1::Card c;
  c.set_pan(std::move(pan));
  c.set_exp_month(month);
  c.set_exp_year(year);
  c.set_cardholder_name(std::move(name));
  return c;
}

TEST_F(EndToEndTest, BadInputGetsClearErrorWithoutEchoAndStoresNothing) {
  const std::string good = "4111111111111111";
  const std::vector<WireCase> cases = {
      {"luhn", Make("4111111111111112"), absl::StatusCode::kInvalidArgument,
       "4111111111111112"},
      {"letters", Make("41111111111a1111"), absl::StatusCode::kInvalidArgument,
       "41111111111a1111"},
      {"arabic-indic",
       Make("\u0664\u0661\u0661\u0661\u0661\u0661\u0661\u0661"
            "\u0661\u0661\u0661\u0661"),
       absl::StatusCode::kInvalidArgument, "\u0664\u0661"},
      {"short", Make("41111111116"), absl::StatusCode::kInvalidArgument,
       "41111111116"},
      {"long", Make("41111111111111111113"), absl::StatusCode::kInvalidArgument,
       "41111111111111111113"},
      {"empty", Make(""), absl::StatusCode::kInvalidArgument, ""},
      {"nul",
       Make(std::string("4111111\0"
                        "11111111",
                        16)),
       absl::StatusCode::kInvalidArgument, "4111111"},
      {"spaces around", Make(" " + good + " "),
       absl::StatusCode::kInvalidArgument, good},
      {"separators", Make("4111-1111-1111-1111"),
       absl::StatusCode::kInvalidArgument, "4111-1111"},
      {"month 0", Make(good, 0, 2030), absl::StatusCode::kInvalidArgument,
       good},
      {"month 13", Make(good, 13, 2030), absl::StatusCode::kInvalidArgument,
       good},
      {"past", Make(good, 1, 2020), absl::StatusCode::kInvalidArgument, good},
      {"control name", Make(good, 0, 0, "EVE\r\nX-Injected: 1"),
       absl::StatusCode::kInvalidArgument, "X-Injected"},
      // Over the request size bound: refused by the transport before parsing.
      {"one MiB", Make(std::string(1 << 20, '4')),
       absl::StatusCode::kResourceExhausted, "4444444444444444"},
  };
  auto pos = Client("pos");
  for (const WireCase& c : cases) {
    SCOPED_TRACE(c.label);
    auto token = pos->Tokenize(c.card);
    EXPECT_THAT(token, StatusIs(c.code));
    if (!c.secret.empty()) {
      EXPECT_THAT(std::string(token.status().message()),
                  Not(HasSubstr(c.secret)));
    }
  }
  // The vault still works after all of that.
  EXPECT_THAT(pos->Tokenize(Make(good)), IsOk());
}

TEST_F(EndToEndTest, UnknownFieldIsRefused) {
  // A client built against a Card with another field (number 99) sends it as
  // an unknown field: the server must refuse rather than silently drop it.
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::TokenizeRequest request;
  *request.mutable_card() = Make("4111111111111111", 12, 2030);
  request.mutable_card()
      ->GetReflection()
      ->MutableUnknownFields(request.mutable_card())
      ->AddLengthDelimited(99, "737");
  v1::TokenizeResponse response;
  auto channel = *client::CreateMutualTlsChannel(Options("pos"));
  grpc::Status status =
      v1::TokenVault::NewStub(channel)->Tokenize(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), Not(HasSubstr("737")));
  EXPECT_THAT(status.error_message(), HasSubstr("fields"));
  EXPECT_THAT(response.token(), IsEmpty());
}

TEST_F(EndToEndTest, DetokenizeFailsForUnknownOrMalformedToken) {
  auto processor = Client("processor");
  EXPECT_THAT(
      processor->Detokenize("tok_aaaaaaaaaaaaaaaaaaaaaaaaaa", "authorization"),
      StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(
      processor->Detokenize("4111111111111111", "authorization"),
      StatusIs(absl::StatusCode::kInvalidArgument, Not(HasSubstr("4111"))));
  EXPECT_THAT(processor->Detokenize("", "authorization"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(EndToEndTest, HealthServiceAnswersOverMutualTls) {
  auto channel = *client::CreateMutualTlsChannel(Options("auditor"));
  for (const char* service : {"", "cardvault.v1.TokenVault"}) {
    EXPECT_THAT(client::CheckHealth(channel, service, absl::Seconds(5)),
                testing::IsOkAndHolds(client::ServingStatus::kServing))
        << service;
  }
  EXPECT_THAT(client::CheckHealth(channel, "no.such.Service", absl::Seconds(5)),
              StatusIs(absl::StatusCode::kNotFound));
  // Health is behind mutual TLS too.
  auto no_cert = *client::CreateMutualTlsChannel(Options(""));
  EXPECT_THAT(client::CheckHealth(no_cert, "", absl::Seconds(3)),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(EndToEndTest, CliTokenizesFromStdinAndDetokenizes) {
  const std::string cli =
      absl::StrCat(CARDVAULT_CLI_PATH, " --pki_dir=", env_->dir(),
                   "/pki --address=", server_->address());
  const std::string out = env_->dir() + "/cli.out";
  testing::RunOrDie(absl::StrCat("echo 378282246310005 | ", cli,
                                 " tokenize --exp_month=12 --exp_year=2035 >",
                                 out));
  const std::string token(
      absl::StripAsciiWhitespace(testing::ReadFileOrEmpty(out)));
  ASSERT_THAT(token, StartsWith("tok_"));
  testing::RunOrDie(
      absl::StrCat(cli, " detokenize --purpose=refund ", token, " >", out));
  EXPECT_THAT(testing::ReadFileOrEmpty(out), HasSubstr("pan: 378282246310005"));
  EXPECT_THAT(testing::ReadFileOrEmpty(out), HasSubstr("expiry: 12/2035"));
  // With the pos identity the CLI is refused, and says why.
  EXPECT_NE(std::system(absl::StrCat(cli, " detokenize --purpose=refund ",
                                     token, " --cert=", env_->pki("pos.crt"),
                                     " --key=", env_->pki("pos.key"), " 2>",
                                     out, " >/dev/null")
                            .c_str()),
            0);
  EXPECT_THAT(testing::ReadFileOrEmpty(out), HasSubstr("PERMISSION_DENIED"));
}

// Invariant 1 (core dumps): the running server may not dump core and keeps
// its data keys in locked pages left out of any dump.
// Every node, when there are two.
TEST_F(EndToEndTest, ServerCannotDumpCoreAndLocksItsKeys) {
  const std::vector<pid_t> pids = server_->pids();
  ASSERT_EQ(pids.size(), server_->node_count());
  for (const pid_t pid : pids) {
    EXPECT_TRUE(RE2Like(
        testing::ReadFileOrEmpty(absl::StrCat("/proc/", pid, "/limits")),
        "Max core file size +0 +0"))
        << "pid " << pid;
  }
  // PR_SET_DUMPABLE has no /proc field a root observer could tell apart;
  // the server logs what prctl(PR_GET_DUMPABLE) reads back at start (each
  // node into the one log).
  const std::string log = testing::ReadFileOrEmpty(*log_path_);
  const std::string hardened = "process hardening: dumpable=0 core_limit=0/0";
  EXPECT_THAT(log, HasSubstr(hardened));
  size_t lines = 0;
  for (size_t at = log.find(hardened); at != std::string::npos;
       at = log.find(hardened, at + 1)) {
    ++lines;
  }
  EXPECT_GE(lines, pids.size());
#ifdef CARDVAULT_SANITIZED
  GTEST_SKIP() << "sanitizer runtimes ignore mlock; checked in the plain build";
#endif
  for (const pid_t pid : pids) {
    SCOPED_TRACE(absl::StrCat("pid ", pid));
    const std::string proc = absl::StrCat("/proc/", pid);
    const std::string status = testing::ReadFileOrEmpty(proc + "/status");
    EXPECT_TRUE(RE2Like(status, "VmLck:\\s+[1-9][0-9]* kB"))
        << "no locked memory";
    // Data-key pages are locked ("lo") and excluded from dumps ("dd",
    // MADV_DONTDUMP); no mapping of an ordinary process has both.
    EXPECT_TRUE(RE2Like(testing::ReadFileOrEmpty(proc + "/smaps"),
                        "VmFlags:.* lo .*dd"))
        << "no mapping is both locked and MADV_DONTDUMP";
  }
}

// Runs last: shuts the server down (SIGTERM), restarts it so that RocksDB
// writes its WAL into SST files, and searches every byte on disk and every
// line of server output for the card data.
TEST_F(EndToEndTest, ZzNoPanOnDiskOrInServerOutputAfterRestart) {
  const auto& tokenized = Tokenized();
  int status = server_->Terminate();
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);  // graceful shutdown on SIGTERM
  delete server_;
  server_ =
      testing::ServerProcess::Start(env_->config_path(), *log_path_)->release();
  auto processor = Client("processor");
  for (size_t i = 0; i < tokenized.size(); i += 97) {
    auto card = processor->Detokenize(tokenized[i].second, "refund");
    ASSERT_THAT(card, IsOk());
    EXPECT_EQ(card->pan(), tokenized[i].first);
  }
  ASSERT_EQ(WEXITSTATUS(server_->Terminate()), 0);
  if (testing::OnPostgres()) {
    ExpectNoCardDataInPostgres();
    return;
  }

  bool has_sst = false, has_wal = false;
  for (const auto& e :
       std::filesystem::recursive_directory_iterator(env_->data_dir())) {
    has_sst |= e.path().extension() == ".sst";
    has_wal |= e.path().extension() == ".log";
  }
  EXPECT_TRUE(has_sst);
  EXPECT_TRUE(has_wal);
  const std::string log = testing::ReadFileOrEmpty(*log_path_);
  EXPECT_THAT(log, HasSubstr("cardvaultd ready"));
  // Every file read once; each card searched in all of them.
  const auto files = testing::ReadTree(env_->data_dir());
  ASSERT_GT(files.size(), 3u);
  for (size_t i = 0; i < tokenized.size(); ++i) {
    const std::string& pan = tokenized[i].first;
    for (const auto& [path, content] : files) {
      ASSERT_THAT(content, Not(HasSubstr(pan)))
          << "card " << i << " in " << path;
      if (i % 2 == 0) {
        ASSERT_THAT(content, Not(HasSubstr(absl::StrCat("HOLDER ", i))))
            << path;
      }
    }
    ASSERT_THAT(log, Not(HasSubstr(pan))) << "card " << i;
  }
  // Also the PANs used by the other tests of this suite.
  EXPECT_THAT(testing::FilesContaining(env_->data_dir(), "4111111111111111"),
              IsEmpty());
  EXPECT_THAT(testing::FilesContaining(env_->data_dir(), "5555555555554444"),
              IsEmpty());
}

}  // namespace
}  // namespace cardvault
