// Two cardvaultd nodes on one PostgreSQL 15 database (started for the test,
// with every statement logged): calls spread over both nodes see one set of
// tokens, one deterministic token per card, one audit chain; no PAN reaches
// the database's logs or files.
#include <fcntl.h>
#include <sys/stat.h>

#include <fstream>
#include <latch>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "cardvault/v1/node_peer.grpc.pb.h"
#include "client/vault_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/clients.h"
#include "tests/testing/eventually.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_cards.h"
#include "tests/testing/test_env.h"

namespace cardvault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;

// The capped processor's daily limit: blocks of 2 (auth::DayBlock).
constexpr int kCappedPerDay = 64;

class MultinodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_ = testing::TestEnv::Create();
    env_->IssueClient("admin2", testing::TestEnv::Identity("admin2"));
    env_->AddToPolicy(
        "bindings { identity: \"spiffe://cardvault.test/admin2\" "
        "roles: ADMIN }");
    auto pg = testing::PostgresServer::Start(
        {.config_lines = {"log_statement = all",
                          "log_min_duration_statement = 0"}});
    ASSERT_THAT(pg, IsOk());
    pg_ = *std::move(pg);
    // The connection string in its own private file, not in the config.
    const std::string conninfo_file = env_->dir() + "/postgres.conninfo";
    {
      std::ofstream out(conninfo_file);
      out << pg_->conninfo() << "\n";
    }
    ASSERT_EQ(chmod(conninfo_file.c_str(), 0600), 0);
    std::string config = testing::ReadFileOrEmpty(env_->config_path());
    const std::string rocksdb =
        absl::StrCat("rocksdb { data_dir: \"", env_->data_dir(), "\" }");
    ASSERT_NE(config.find(rocksdb), std::string::npos);
    config = absl::StrReplaceAll(
        config, {{rocksdb, absl::StrCat("postgres { conninfo_file: \"",
                                        conninfo_file, "\" }")}});
    std::ofstream(env_->config_path(), std::ios::trunc) << config;
    env_->JoinCluster();
    // A detokenizer with a daily limit, for the cluster-wide velocity test.
    env_->IssueClient("capped-processor",
                      testing::TestEnv::Identity("capped-processor"));
    env_->AddToPolicy(absl::StrCat(
        "bindings { identity: \"",
        testing::TestEnv::Identity("capped-processor"),
        "\" roles: DETOKENIZER detokenize_domains: \"dev-merchant/pos\" "
        "detokenize_limit { per_day: ",
        kCappedPerDay, " } }"));
    log_ = env_->dir() + "/server.log";
    testing::RunOrDie(absl::StrCat(CARDVAULTD_PATH, " --config ",
                                   env_->config_path(), " --migrate >>", log_,
                                   " 2>&1"));
    // The first node creates the keys; the second finds them.
    for (int i = 0; i < 2; ++i) {
      auto node = testing::ServerProcess::Start(env_->config_path(), log_);
      ASSERT_THAT(node, IsOk());
      nodes_.push_back(*std::move(node));
    }
  }
  // Whether any audit record, read through node 1, holds `needle`.
  bool TrailHolds(absl::string_view needle) {
    bool found = false;
    EXPECT_THAT(Client(1, "auditor")
                    ->ListAuditEvents(v1::ListEventsRequest(),
                                      [&](const v1::AuditEvent& e) {
                                        found |= absl::StrContains(
                                            e.DebugString(), needle);
                                      }),
                IsOk());
    return found;
  }
  std::unique_ptr<client::VaultClient> Client(int node, absl::string_view who) {
    return testing::ClientFor(*env_, nodes_[node]->address(), who);
  }

  std::unique_ptr<testing::TestEnv> env_;
  std::unique_ptr<testing::PostgresServer> pg_;
  std::string log_;
  std::vector<std::unique_ptr<testing::ServerProcess>> nodes_;
};

v1::TokenizeRequest Request(const std::string& pan) {
  v1::TokenizeRequest r;
  r.mutable_card()->set_pan(pan);
  r.mutable_card()->set_exp_month(12);
  r.mutable_card()->set_exp_year(2031);
  return r;
}

TEST_F(MultinodeTest, TokensOfOneNodeDetokenizeThroughTheOther) {
  const std::vector<std::string> pans = {"4111111111111111", "5555555555554444",
                                         "378282246310005"};
  std::vector<std::string> tokens;
  for (size_t i = 0; i < pans.size(); ++i) {
    auto token = Client(i % 2, "pos")->Tokenize(Request(pans[i]));
    ASSERT_THAT(token, IsOk());
    tokens.push_back(token->token());
  }
  for (size_t i = 0; i < pans.size(); ++i) {
    auto card = Client((i + 1) % 2, "processor")
                    ->Detokenize(tokens[i], "authorization");
    ASSERT_THAT(card, IsOk());
    EXPECT_EQ(card->pan(), pans[i]);
  }
  // Each record names the node that wrote it.
  std::set<std::string> writers;
  v1::ListEventsRequest all;
  all.set_event_type(v1::DETOKENIZE);
  ASSERT_THAT(
      Client(0, "auditor")
          ->ListAuditEvents(
              all, [&](const v1::AuditEvent& e) { writers.insert(e.node()); }),
      IsOk());
  EXPECT_THAT(writers,
              ::testing::UnorderedElementsAre(
                  ::testing::EndsWith(absl::StrCat(":", nodes_[0]->port())),
                  ::testing::EndsWith(absl::StrCat(":", nodes_[1]->port()))));
  // One chain holds both nodes' records, and verifies from either.
  for (int node = 0; node < 2; ++node) {
    auto report = Client(node, "auditor")->VerifyAuditChain();
    ASSERT_THAT(report, IsOk());
    EXPECT_TRUE(report->intact()) << report->problem();
  }
}

v1::DetokenizeRequest ForAuthorization(const std::string& token) {
  v1::DetokenizeRequest d;
  d.set_token(token);
  d.set_purpose("authorization");
  return d;
}

// A NodePeer stub presenting pki/NAME.crt to `node`.
std::unique_ptr<v1::NodePeer::Stub> PeerStub(const testing::TestEnv& env,
                                             const std::string& address,
                                             absl::string_view name) {
  return v1::NodePeer::NewStub(*client::CreateMutualTlsChannel(
      testing::ClientOptionsFor(env, address, name)));
}

grpc::Status TakeHeldCvv(v1::NodePeer::Stub& stub, const std::string& token,
                         v1::TakeHeldCvvResponse* response) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::TakeHeldCvvRequest request;
  request.set_token(token);
  return stub.TakeHeldCvv(&context, request, response);
}

TEST_F(MultinodeTest, ACvvGivenToOneNodeIsReturnedOnceThroughTheOther) {
  v1::TokenizeRequest r = Request("4111111111111111");
  r.set_cvv("7391");
  auto token = Client(0, "pos")->Tokenize(r);
  ASSERT_THAT(token, IsOk());
  auto first =
      Client(1, "processor")->Detokenize(ForAuthorization(token->token()));
  ASSERT_THAT(first, IsOk());
  EXPECT_EQ(first->card().pan(), "4111111111111111");
  EXPECT_EQ(first->cvv(), "7391");
  for (int node = 0; node < 2; ++node) {
    auto again =
        Client(node, "processor")->Detokenize(ForAuthorization(token->token()));
    ASSERT_THAT(again, IsOk());
    EXPECT_THAT(again->cvv(), ::testing::IsEmpty()) << node;
  }
  // The holder recorded whom it released the CVV to; no record holds it.
  std::vector<v1::AuditEvent> releases;
  bool cvv_in_trail = false;
  v1::ListEventsRequest all;
  ASSERT_THAT(Client(1, "auditor")
                  ->ListAuditEvents(all,
                                    [&](const v1::AuditEvent& e) {
                                      if (e.event_type() == v1::CVV_RELEASE) {
                                        releases.push_back(e);
                                      }
                                      cvv_in_trail |= absl::StrContains(
                                          e.DebugString(), "7391");
                                    }),
              IsOk());
  EXPECT_FALSE(cvv_in_trail);
  ASSERT_EQ(releases.size(), 1u);
  EXPECT_EQ(releases[0].token(), token->token());
  EXPECT_EQ(releases[0].detail(), "cvv released");
  EXPECT_EQ(releases[0].identity(), testing::TestEnv::Identity("node"));
  EXPECT_TRUE(
      absl::EndsWith(releases[0].node(), absl::StrCat(":", nodes_[0]->port())))
      << releases[0].node();
  // The database never sees it either: token_lifecycle_end_to_end_test's
  // CVV scan runs on two nodes (_postgres), its processor on the other one.
}

TEST_F(MultinodeTest, OnlyANodeIdentityMayTakeAHeldCvv) {
  v1::TokenizeRequest r = Request("4111111111111111");
  r.set_cvv("123");
  auto token = Client(0, "pos")->Tokenize(r);
  ASSERT_THAT(token, IsOk());
  const std::string node0 = nodes_[0]->node_address(0);
  for (const char* who : {"pos", "processor", "auditor", "admin"}) {
    v1::TakeHeldCvvResponse response;
    grpc::Status s =
        TakeHeldCvv(*PeerStub(*env_, node0, who), token->token(), &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << who;
    EXPECT_THAT(response.cvv(), ::testing::IsEmpty());
  }
  // A node's identity opens no card data through the client API.
  auto as_node = Client(1, "node");
  EXPECT_THAT(as_node->Tokenize(Request("5555555555554444")),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(as_node->Detokenize(ForAuthorization(token->token())),
              StatusIs(absl::StatusCode::kPermissionDenied));
  // Hostile tokens: refused, never echoed, never recorded as sent.
  auto node_stub = PeerStub(*env_, node0, "node");
  for (const std::string& bad :
       {std::string("4111111111111111"), std::string(4000, '4'),
        absl::StrCat(token->token(), "\n4111111111111111")}) {
    v1::TakeHeldCvvResponse response;
    grpc::Status s = TakeHeldCvv(*node_stub, bad, &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(),
                ::testing::Not(::testing::HasSubstr("4111")));
  }
  EXPECT_FALSE(TrailHolds("4111111111111111"));
  // The CVV survived all of that, for the processor.
  auto card =
      Client(1, "processor")->Detokenize(ForAuthorization(token->token()));
  ASSERT_THAT(card, IsOk());
  EXPECT_EQ(card->cvv(), "123");
  // And a node asking again gets nothing.
  v1::TakeHeldCvvResponse response;
  ASSERT_TRUE(TakeHeldCvv(*node_stub, token->token(), &response).ok());
  EXPECT_THAT(response.cvv(), ::testing::IsEmpty());
}

TEST_F(MultinodeTest, TheCvvsOfAKilledNodeAreGoneAndItsCardsStillDetokenize) {
  v1::TokenizeRequest r = Request("4111111111111111");
  r.set_cvv("123");
  auto token = Client(0, "pos")->Tokenize(r);
  ASSERT_THAT(token, IsOk());
  nodes_[0]->Kill9();
  const absl::Time start = absl::Now();
  auto card =
      Client(1, "processor")->Detokenize(ForAuthorization(token->token()));
  ASSERT_THAT(card, IsOk());
  EXPECT_EQ(card->card().pan(), "4111111111111111");
  EXPECT_THAT(card->cvv(), ::testing::IsEmpty());
  std::cout << "Detokenize with the CVV holder dead took "
            << absl::ToDoubleMilliseconds(absl::Now() - start) << " ms\n";
}

// ---- Hostile tests (review of "CVVs across nodes") ----

// A batch whose CVVs the other node holds: each item is one NodePeer call,
// all at once, under one NODE identity and one connection.
TEST_F(MultinodeTest, HostileABatchOfCvvsHeldByTheOtherNodeReturnsThemAll) {
  constexpr int kItems = 300;
  v1::TokenizeBatchRequest tokenize;
  for (int i = 0; i < kItems; ++i) {
    v1::TokenizeRequest* r = tokenize.add_requests();
    *r = Request("4111111111111111");
    r->set_cvv(absl::StrCat(100 + i % 900));
  }
  auto tokens = Client(0, "pos")->TokenizeBatch(tokenize);
  ASSERT_THAT(tokens, IsOk());
  ASSERT_EQ(tokens->results_size(), kItems);
  v1::DetokenizeBatchRequest batch;
  for (const auto& result : tokens->results()) {
    ASSERT_EQ(result.status().code(), 0);
    *batch.add_requests() = ForAuthorization(result.response().token());
  }
  const absl::Time start = absl::Now();
  auto first = Client(1, "processor")->DetokenizeBatch(batch);
  ASSERT_THAT(first, IsOk());
  int with_cvv = 0;
  for (const auto& result : first->results()) {
    with_cvv += !result.response().cvv().empty();
  }
  std::cout << "first batch: " << with_cvv << " of " << kItems << " CVVs in "
            << absl::ToDoubleMilliseconds(absl::Now() - start) << " ms\n";
  auto second = Client(1, "processor")->DetokenizeBatch(batch);
  ASSERT_THAT(second, IsOk());
  int again = 0;
  for (const auto& result : second->results()) {
    again += !result.response().cvv().empty();
  }
  std::cout << "second batch: " << again << " more CVVs\n";
  int released = 0, none_held = 0, refused = 0;
  ASSERT_THAT(Client(0, "auditor")
                  ->ListAuditEvents(v1::ListEventsRequest(),
                                    [&](const v1::AuditEvent& e) {
                                      if (e.event_type() != v1::CVV_RELEASE) {
                                        return;
                                      }
                                      if (e.detail() == "cvv released") {
                                        ++released;
                                      } else if (e.detail() == "no cvv held") {
                                        ++none_held;
                                      } else {
                                        ++refused;
                                      }
                                    }),
              IsOk());
  std::cout << "holder's CVV_RELEASE records: " << released << " released, "
            << none_held << " none held, " << refused << " other\n";
  std::istringstream log(testing::ReadFileOrEmpty(log_));
  int shown = 0;
  for (std::string line; std::getline(log, line) && shown < 8;) {
    if (absl::StrContains(line, "no CVV from node") ||
        absl::StrContains(line, "too many") ||
        absl::StrContains(line, "RESOURCE")) {
      std::cout << "log: " << line.substr(0, 400) << "\n";
      ++shown;
    }
  }
  EXPECT_EQ(with_cvv, kItems);
  EXPECT_EQ(with_cvv + again, kItems);
  EXPECT_EQ(released, with_cvv + again) << "CVVs released but never returned";
}

// Detokenize through both nodes at once, for a CVV one of them holds.
TEST_F(MultinodeTest, HostileRacingDetokenizesOnBothNodesGetTheCvvOnce) {
  constexpr int kRounds = 20;
  auto c0 = Client(0, "processor");
  auto c1 = Client(1, "processor");
  for (int round = 0; round < kRounds; ++round) {
    v1::TokenizeRequest r = Request("4111111111111111");
    r.set_cvv("123");
    auto token = Client(0, "pos")->Tokenize(r);
    ASSERT_THAT(token, IsOk());
    absl::StatusOr<v1::DetokenizeResponse> a, b;
    std::thread x(
        [&] { a = c0->Detokenize(ForAuthorization(token->token())); });
    std::thread y(
        [&] { b = c1->Detokenize(ForAuthorization(token->token())); });
    x.join();
    y.join();
    ASSERT_THAT(a, IsOk());
    ASSERT_THAT(b, IsOk());
    EXPECT_EQ(!a->cvv().empty() + !b->cvv().empty(), 1) << round;
  }
}

// Identities without the NODE role (the watchdog has no role at all),
// unknown fields and bytes that are not UTF-8.
TEST_F(MultinodeTest, HostileNodePeerRefusesOtherIdentitiesAndBadRequests) {
  v1::TokenizeRequest r = Request("4111111111111111");
  r.set_cvv("123");
  auto token = Client(0, "pos")->Tokenize(r);
  ASSERT_THAT(token, IsOk());
  const std::string node0 = nodes_[0]->node_address(0);
  {
    v1::TakeHeldCvvResponse response;
    grpc::Status s = TakeHeldCvv(*PeerStub(*env_, node0, "watchdog"),
                                 token->token(), &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_THAT(response.cvv(), ::testing::IsEmpty());
  }
  auto node_stub = PeerStub(*env_, node0, "node");
  {
    grpc::ClientContext context;
    v1::TakeHeldCvvRequest request;
    request.set_token(token->token());
    request.GetReflection()->MutableUnknownFields(&request)->AddLengthDelimited(
        7, "4111111111111111");
    v1::TakeHeldCvvResponse response;
    grpc::Status s = node_stub->TakeHeldCvv(&context, request, &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(),
                ::testing::Not(::testing::HasSubstr("4111")));
    EXPECT_THAT(response.cvv(), ::testing::IsEmpty());
  }
  {
    grpc::ClientContext context;
    v1::TakeHeldCvvRequest request;
    request.set_token(std::string("tok_\xff\xfe") + "4111111111111111");
    v1::TakeHeldCvvResponse response;
    grpc::Status s = node_stub->TakeHeldCvv(&context, request, &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(),
                ::testing::Not(::testing::HasSubstr("4111")));
  }
  // Still held after all that.
  auto card =
      Client(1, "processor")->Detokenize(ForAuthorization(token->token()));
  ASSERT_THAT(card, IsOk());
  EXPECT_EQ(card->cvv(), "123");
  const std::string log = testing::ReadFileOrEmpty(log_);
  EXPECT_THAT(log, ::testing::Not(::testing::HasSubstr("4111111111111111")));
  EXPECT_FALSE(TrailHolds("4111111111111111"));
}

TEST_F(MultinodeTest,
       ConcurrentDeterministicCallsThroughBothNodesGiveOneToken) {
  constexpr int kCalls = 16;
  std::vector<std::unique_ptr<client::VaultClient>> clients;
  for (int i = 0; i < kCalls; ++i) clients.push_back(Client(i % 2, "pos"));
  std::vector<std::string> tokens(kCalls);
  std::latch start(kCalls);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] {
      v1::TokenizeRequest r = Request("4012888888881881");
      r.set_deterministic(true);
      start.arrive_and_wait();
      absl::StatusOr<v1::TokenizeResponse> t;
      for (int attempt = 0; attempt < 8; ++attempt) {
        t = clients[i]->Tokenize(r);
        if (!absl::IsResourceExhausted(t.status()) &&
            !absl::IsUnavailable(t.status())) {
          break;
        }
        absl::SleepFor(absl::Milliseconds(300));
      }
      ASSERT_THAT(t, IsOk());
      tokens[i] = t->token();
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(std::set<std::string>(tokens.begin(), tokens.end()).size(), 1u);
}

TEST_F(MultinodeTest, TheSameIdempotencyKeyThroughBothNodesCreatesOnce) {
  v1::TokenizeRequest r = Request("6011111111111117");
  r.set_idempotency_key("order-20261207-0001");
  auto first = Client(0, "pos")->Tokenize(r);
  ASSERT_THAT(first, IsOk());
  auto retry = Client(1, "pos")->Tokenize(r);
  ASSERT_THAT(retry, IsOk());
  EXPECT_EQ(retry->token(), first->token());
  EXPECT_TRUE(first->created());
  EXPECT_FALSE(retry->created());
}

TEST_F(MultinodeTest, NoPanReachesTheDatabaseLogOrFiles) {
  const std::string pan = "4000056655665556";
  v1::TokenizeRequest r = Request(pan);
  r.set_deterministic(true);
  auto token = Client(0, "pos")->Tokenize(r);
  ASSERT_THAT(token, IsOk());
  ASSERT_THAT(
      Client(1, "processor")->Detokenize(token->token(), "authorization"),
      IsOk());
  ASSERT_THAT(pg_->Stop(), IsOk());  // flushes every file
  const std::string logged = testing::ReadFileOrEmpty(pg_->log_file());
  // The log holds the statements (log_statement = all) ...
  EXPECT_TRUE(absl::StrContains(logged, "audit_records"));
  // ... with their bound values (ciphertext, keyed digests, tokens, in hex)
  EXPECT_TRUE(absl::StrContains(logged, "parameters: $1 = "));
  EXPECT_TRUE(
      absl::StrContains(logged, absl::BytesToHexString(token->token())));
  // ... and never the card number, in text or in any hex spelling.
  for (const std::string& needle :
       {pan, absl::BytesToHexString(pan), pan.substr(4, 8)}) {
    EXPECT_EQ(logged.find(needle), std::string::npos) << needle;
    EXPECT_THAT(testing::FilesContaining(pg_->data_directory(), needle),
                ::testing::IsEmpty())
        << needle;
  }
}

TEST_F(MultinodeTest, AKekRotationProposedOnOneNodeIsApprovedOnTheOther) {
  auto old_token = Client(0, "pos")->Tokenize(Request("4111111111111111"));
  ASSERT_THAT(old_token, IsOk());
  v1::ProposeOperationRequest propose;
  propose.set_kind(v1::ROTATE_KEK);
  propose.set_reason("yearly KEK rotation");
  auto op = Client(0, "admin")->ProposeOperation(propose);
  ASSERT_THAT(op, IsOk());
  // The other node sees the proposal, and its approval executes it there.
  auto listed = Client(1, "admin2")->ListOperations();
  ASSERT_THAT(listed, IsOk());
  ASSERT_EQ(listed->operations_size(), 1);
  EXPECT_EQ(listed->operations(0).id(), op->id());
  auto approved = Client(1, "admin2")->ApproveOperation(op->id());
  ASSERT_THAT(approved, IsOk());
  EXPECT_EQ(approved->state(), v1::Operation::EXECUTED) << approved->outcome();
  // Approving again on the first node is refused: it is no longer pending.
  EXPECT_THAT(
      Client(0, "admin2")->ApproveOperation(op->id()),
      ::cardvault::testing::StatusIs(absl::StatusCode::kFailedPrecondition));

  // The first node wraps a new data key under the KEK the other node made,
  // and each node uses the key the other made.
  auto rotated = Client(0, "admin")->RotateDataKey();
  ASSERT_THAT(rotated, IsOk());
  std::vector<std::pair<std::string, std::string>> tokens = {
      {"4111111111111111", old_token->token()}};
  for (int node = 0; node < 2; ++node) {
    const std::string pan = node == 0 ? "5555555555554444" : "378282246310005";
    auto t = Client(node, "pos")->Tokenize(Request(pan));
    ASSERT_THAT(t, IsOk());
    tokens.emplace_back(pan, t->token());
  }
  for (int node = 0; node < 2; ++node) {
    for (const auto& [pan, token] : tokens) {
      auto card = Client(node, "processor")->Detokenize(token, "authorization");
      ASSERT_THAT(card, IsOk()) << "node " << node;
      EXPECT_EQ(card->pan(), pan);
    }
  }
  // A restarted node unwraps every key under the new KEK.
  ASSERT_EQ(WEXITSTATUS(nodes_[0]->Terminate()), 0);
  auto restarted = testing::ServerProcess::Start(env_->config_path(), log_);
  ASSERT_THAT(restarted, IsOk());
  nodes_[0] = *std::move(restarted);
  for (const auto& [pan, token] : tokens) {
    auto card = Client(0, "processor")->Detokenize(token, "authorization");
    ASSERT_THAT(card, IsOk());
    EXPECT_EQ(card->pan(), pan);
  }
  auto report = Client(0, "auditor")->VerifyAuditChain();
  ASSERT_THAT(report, IsOk());
  EXPECT_TRUE(report->intact()) << report->problem();
}

TEST_F(MultinodeTest, APolicyChangeReachesEveryNodeAndTheTrailShowsWhich) {
  // Both nodes recorded the policy they started with, with their names.
  auto auditor = Client(0, "auditor");
  std::map<std::string, std::string> started;  // node -> policy detail
  v1::ListEventsRequest starts;
  starts.set_event_type(v1::SERVER_START);
  ASSERT_THAT(auditor->ListAuditEvents(starts,
                                       [&](const v1::AuditEvent& e) {
                                         started[e.node()] = e.detail();
                                       }),
              IsOk());
  ASSERT_EQ(started.size(), 2u);
  EXPECT_EQ(started.begin()->second, started.rbegin()->second);
  EXPECT_THAT(started.begin()->second, ::testing::StartsWith("policy sha256="));

  env_->IssueClient("late-pos", testing::TestEnv::Identity("late-pos"));
  env_->AddToPolicy(absl::StrCat(
      "bindings { identity: \"", testing::TestEnv::Identity("late-pos"),
      "\" roles: TOKENIZER tokenize_domains: \"dev-merchant/pos\" }"));
  // Each node re-reads the file (every 2 s by default) and serves the new
  // binding; each records the reload with the new file's hash.
  for (int node = 0; node < 2; ++node) {
    auto late = Client(node, "late-pos");
    absl::Status last;
    for (int i = 0; i < 100; ++i) {
      last = late->Tokenize(Request("4111111111111111")).status();
      if (last.ok()) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    EXPECT_THAT(last, IsOk()) << "node " << node;
  }
  std::map<std::string, std::string> reloaded;
  v1::ListEventsRequest reloads;
  reloads.set_event_type(v1::POLICY_RELOAD);
  ASSERT_THAT(auditor->ListAuditEvents(reloads,
                                       [&](const v1::AuditEvent& e) {
                                         EXPECT_EQ(e.status_code(), 0);
                                         reloaded[e.node()] = e.detail();
                                       }),
              IsOk());
  ASSERT_EQ(reloaded.size(), 2u);
  for (const auto& [node, detail] : reloaded) {
    EXPECT_TRUE(started.contains(node)) << node;
    EXPECT_THAT(detail, ::testing::StartsWith("policy sha256="));
    EXPECT_NE(detail.substr(0, 78), started[node].substr(0, 78)) << node;
  }
  EXPECT_EQ(reloaded.begin()->second.substr(0, 78),
            reloaded.rbegin()->second.substr(0, 78));
}

// Tokenize calls from `threads` clients spread over the nodes still up,
// each with its own cards, until stopped: what was acknowledged, by PAN.
class TokenizeLoad {
 public:
  TokenizeLoad(MultinodeTest* test,
               std::vector<std::unique_ptr<client::VaultClient>> clients)
      : clients_(std::move(clients)) {
    for (size_t i = 0; i < clients_.size(); ++i) {
      threads_.emplace_back([this, i] {
        const std::vector<std::string> pans = testing::MakePans(2000, 1000 + i);
        for (const std::string& pan : pans) {
          if (stop_.load()) return;
          absl::StatusOr<v1::TokenizeResponse> t =
              clients_[i]->Tokenize(Request(pan));
          absl::MutexLock lock(&mu_);
          if (t.ok()) {
            acknowledged_.emplace_back(pan, t->token());
          } else {
            failures_.push_back(t.status().code());
          }
        }
      });
    }
  }
  ~TokenizeLoad() { Stop(); }
  void Stop() {
    stop_ = true;
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  size_t acknowledged() {
    absl::MutexLock lock(&mu_);
    return acknowledged_.size();
  }
  std::vector<std::pair<std::string, std::string>> tokens() {
    absl::MutexLock lock(&mu_);
    return acknowledged_;
  }
  std::vector<absl::StatusCode> failures() {
    absl::MutexLock lock(&mu_);
    return failures_;
  }

 private:
  std::vector<std::unique_ptr<client::VaultClient>> clients_;
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  std::vector<std::pair<std::string, std::string>> acknowledged_;
  std::vector<absl::StatusCode> failures_;
  std::vector<std::thread> threads_;
};

// Every acknowledged token returns its card through `node`.
void ExpectAllDetokenize(
    client::VaultClient& processor,
    const std::vector<std::pair<std::string, std::string>>& tokens) {
  for (const auto& [pan, token] : tokens) {
    absl::StatusOr<v1::Card> card =
        processor.Detokenize(token, "authorization");
    ASSERT_THAT(card, IsOk()) << token;
    ASSERT_EQ(card->pan(), pan) << token;
  }
}

// The LEASE records of the trail, oldest first.
std::vector<v1::AuditEvent> LeaseEvents(client::VaultClient& auditor) {
  std::vector<v1::AuditEvent> out;
  v1::ListEventsRequest leases;
  leases.set_event_type(v1::LEASE);
  EXPECT_THAT(auditor.ListAuditEvents(
                  leases, [&](const v1::AuditEvent& e) { out.push_back(e); }),
              IsOk());
  return out;
}

TEST_F(MultinodeTest, KillNineOfTheLeaseHolderUnderLoadLosesNothing) {
  // The first node took the background lease at its start.
  const std::string node0 = absl::StrCat(":", nodes_[0]->port());
  const std::string node1 = absl::StrCat(":", nodes_[1]->port());
  {
    const std::vector<v1::AuditEvent> leases =
        LeaseEvents(*Client(1, "auditor"));
    ASSERT_EQ(leases.size(), 1u);
    EXPECT_TRUE(absl::EndsWith(leases[0].node(), node0)) << leases[0].node();
  }
  std::vector<std::unique_ptr<client::VaultClient>> clients;
  for (int i = 0; i < 6; ++i) clients.push_back(Client(i % 2, "pos"));
  TokenizeLoad load(this, std::move(clients));
  ASSERT_TRUE(testing::Eventually(absl::Seconds(60),
                                  [&] { return load.acknowledged() >= 200; }));
  nodes_[0]->Kill9();
  const size_t at_kill = load.acknowledged();
  // The surviving node goes on serving its clients.
  ASSERT_TRUE(testing::Eventually(
      absl::Seconds(60), [&] { return load.acknowledged() >= at_kill + 200; }));
  load.Stop();
  std::cout << load.acknowledged() << " tokens acknowledged, "
            << load.failures().size() << " calls failed (" << at_kill
            << " acknowledged at the kill)\n";
  // Only calls to the killed node failed, each with UNAVAILABLE.
  for (absl::StatusCode code : load.failures()) {
    EXPECT_EQ(code, absl::StatusCode::kUnavailable);
  }
  auto processor = Client(1, "processor");
  ExpectAllDetokenize(*processor, load.tokens());

  // The lease moves to the survivor once the dead node's claim expires
  // (15 s and the 2 s clock-skew margin), without a restart.
  auto auditor = Client(1, "auditor");
  ASSERT_TRUE(testing::Eventually(
      absl::Seconds(60), [&] { return LeaseEvents(*auditor).size() == 2; }));
  const v1::AuditEvent moved = LeaseEvents(*auditor)[1];
  EXPECT_TRUE(absl::EndsWith(moved.node(), node1)) << moved.node();
  EXPECT_THAT(moved.detail(), ::testing::HasSubstr("fence 2"));
  EXPECT_THAT(moved.detail(),
              ::testing::HasSubstr(absl::StrCat("previous holder ")));
  EXPECT_THAT(moved.detail(), ::testing::HasSubstr(node0));
  auto report = auditor->VerifyAuditChain();
  ASSERT_THAT(report, IsOk());
  EXPECT_TRUE(report->intact()) << report->problem();
}

TEST_F(MultinodeTest, RestartingPostgresUnderLoadLosesNothing) {
  std::vector<std::unique_ptr<client::VaultClient>> clients;
  for (int i = 0; i < 4; ++i) clients.push_back(Client(i % 2, "pos"));
  TokenizeLoad load(this, std::move(clients));
  ASSERT_TRUE(testing::Eventually(absl::Seconds(60),
                                  [&] { return load.acknowledged() >= 100; }));
  ASSERT_THAT(pg_->Stop(), IsOk());
  // While the database is down, calls fail with UNAVAILABLE and nothing is
  // acknowledged. A commit cut off during COMMIT is read back for at most
  // resolve_timeout (2 s), below the clients' 5 s deadline, so even those
  // calls end UNAVAILABLE rather than DEADLINE_EXCEEDED.
  ASSERT_TRUE(testing::Eventually(absl::Seconds(90),
                                  [&] { return !load.failures().empty(); }));
  const size_t while_down = load.acknowledged();
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(load.acknowledged(), while_down);
  ASSERT_THAT(pg_->Start(), IsOk());
  // Both nodes reconnect by themselves.
  ASSERT_TRUE(testing::Eventually(absl::Seconds(90), [&] {
    return load.acknowledged() >= while_down + 100;
  }));
  load.Stop();
  std::cout << load.acknowledged() << " tokens acknowledged, "
            << load.failures().size() << " calls failed\n";
  for (absl::StatusCode code : load.failures()) {
    EXPECT_EQ(code, absl::StatusCode::kUnavailable);
  }
  for (int node = 0; node < 2; ++node) {
    auto t = Client(node, "pos")->Tokenize(Request("4000002500003155"));
    EXPECT_THAT(t, IsOk()) << "node " << node;
  }
  ExpectAllDetokenize(*Client(0, "processor"), load.tokens());
  auto report = Client(1, "auditor")->VerifyAuditChain();
  ASSERT_THAT(report, IsOk());
  EXPECT_TRUE(report->intact()) << report->problem();
}

TEST_F(MultinodeTest, ADailyVelocityLimitHoldsForBothNodesTogether) {
  auto token = Client(0, "pos")->Tokenize(Request("4111111111111111"));
  ASSERT_THAT(token, IsOk());
  std::vector<std::unique_ptr<client::VaultClient>> capped;
  for (int node = 0; node < 2; ++node) {
    capped.push_back(Client(node, "capped-processor"));
  }
  // Alternating, each node uses up its block before it reserves another:
  // the whole limit is admitted, half through each node.
  for (int i = 0; i < kCappedPerDay; ++i) {
    ASSERT_THAT(capped[i % 2]->Detokenize(token->token(), "authorization"),
                IsOk())
        << i;
  }
  // The cluster-wide total is at the limit: both nodes refuse, though each
  // admitted only half of it itself.
  for (int i = 0; i < 4; ++i) {
    EXPECT_THAT(capped[i % 2]->Detokenize(token->token(), "authorization"),
                StatusIs(absl::StatusCode::kResourceExhausted))
        << i;
  }
  // Another identity's limit is its own.
  EXPECT_THAT(
      Client(1, "processor")->Detokenize(token->token(), "authorization"),
      IsOk());
  // The audit trail: 32 admitted by each node, and the refusals recorded.
  std::map<std::string, int> admitted;
  int refused = 0;
  v1::ListEventsRequest all;
  all.set_event_type(v1::DETOKENIZE);
  ASSERT_THAT(Client(0, "auditor")
                  ->ListAuditEvents(
                      all,
                      [&](const v1::AuditEvent& e) {
                        if (e.identity() !=
                            testing::TestEnv::Identity("capped-processor")) {
                          return;
                        }
                        if (e.status_code() == 0) ++admitted[e.node()];
                        refused += e.status_code() ==
                                   static_cast<int>(
                                       absl::StatusCode::kResourceExhausted);
                      }),
              IsOk());
  EXPECT_THAT(admitted, ::testing::UnorderedElementsAre(
                            ::testing::Pair(::testing::_, kCappedPerDay / 2),
                            ::testing::Pair(::testing::_, kCappedPerDay / 2)));
  EXPECT_EQ(refused, 4);
  // Neither node's background purge of past reservations failed.
  EXPECT_THAT(testing::ReadFileOrEmpty(log_),
              ::testing::Not(::testing::HasSubstr("velocity-purge failed")));
}

// A data key rotated on one node stays the other node's primary until that
// node's next key refresh (10 s), so the other node may still seal new
// records under the old key after the rotating node's re-encryption pass.
// The key must not retire on that pass (it began within retire_grace of the
// rotation), so its destruction fails and every record stays readable.
TEST_F(MultinodeTest,
       ARecordAStaleNodeSealsUnderTheOldKeySurvivesItsDestruction) {
  auto admin = Client(0, "admin");
  auto admin2 = Client(0, "admin2");
  auto first = Client(1, "pos")->Tokenize(Request("4111111111111111"));
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT(admin->RotateDataKey(), IsOk());
  v1::ProposeOperationRequest reencrypt;
  reencrypt.set_kind(v1::REENCRYPT_ALL);
  reencrypt.set_reason("move records off dek/00000001");
  auto op = admin->ProposeOperation(reencrypt);
  ASSERT_THAT(op, IsOk());
  auto moved = admin2->ApproveOperation(op->id());
  ASSERT_THAT(moved, IsOk());
  EXPECT_EQ(moved->state(), v1::Operation::EXECUTED) << moved->outcome();
  // Node 1 has not refreshed its keys yet (within 10 s of the rotation): it
  // seals this record under dek/00000001.
  auto late = Client(1, "pos")->Tokenize(Request("5555555555554444"));
  ASSERT_THAT(late, IsOk());
  v1::ProposeOperationRequest destroy;
  destroy.set_kind(v1::DESTROY_DATA_KEY);
  destroy.set_key_version(1);
  destroy.set_reason("retired");
  auto dop = admin->ProposeOperation(destroy);
  ASSERT_THAT(dop, IsOk());
  // The pass began within the grace of the rotation: not destroyed.
  auto destroyed = admin2->ApproveOperation(dop->id());
  ASSERT_THAT(destroyed, IsOk());
  EXPECT_EQ(destroyed->state(), v1::Operation::FAILED) << destroyed->outcome();
  absl::SleepFor(absl::Seconds(11));  // node 1 refreshes its keys too
  for (int node = 0; node < 2; ++node) {
    for (const auto* token : {&first->token(), &late->token()}) {
      auto card = Client(node, "processor")->Detokenize(*token, "refund");
      EXPECT_THAT(card, IsOk()) << "node " << node << ", token " << *token;
    }
  }
}

}  // namespace
}  // namespace cardvault
