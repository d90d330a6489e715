// Callers who hold a certificate of the client CA and try what an attacker
// would: identities forged across certificate fields, log lines forged
// through a SAN, requests that do not parse or carry fields the server does
// not know, values that are not what they claim, floods of refused calls and
// of calls in flight. Each gets a clear refusal; the trail and the log hold
// only what the recording rule allows, within bounded growth.
#include <grpcpp/generic/generic_stub.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "client/vault_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/clients.h"
#include "tests/testing/generic_call.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_cards.h"
#include "tests/testing/test_env.h"

namespace cardvault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr absl::string_view kPan = "4111111111111111";
// Field 99, length-delimited "x": what a newer client might add.
constexpr char kUnknownField[] = "\x9a\x06\x01x";

class HostileCallerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    env_ = testing::TestEnv::Create().release();
    env_->IssueClient("stranger", testing::TestEnv::Identity("stranger"));
    // No SAN, and a CN spelled as the processor's URI identity.
    IssueRaw("cn-processor",
             absl::StrCat("/CN=", absl::StrReplaceAll(
                                      testing::TestEnv::Identity("processor"),
                                      {{"/", "\\/"}})),
             "");
    IssueRaw("cn-lane", "/CN=lane-7", "");
    // A URI SAN in the scheme reserved for CN identities.
    IssueRaw("cn-scheme", "/CN=x", "subjectAltName=URI:cn:lane-7");
    // A URI SAN holding a newline and the start of a forged log line
    // (openssl's config turns "\n" into a newline).
    IssueRaw("newline", "/CN=newline",
             "subjectAltName=URI:spiffe://cardvault.test/evil\\n"
             "2030-01-01T00:00:00.000Z I cardvaultd: FORGED policy reloaded");
    env_->AddToPolicy("allow_common_name_identities: true");
    env_->AddToPolicy(
        "bindings { identity: \"cn:lane-7\" roles: TOKENIZER "
        "tokenize_domains: \"dev-merchant/pos\" }");
    std::ofstream(env_->config_path(), std::ios::app)
        << "limits { max_calls_per_identity: 4 "
           "refusals_recorded_per_minute: 20 }\n";
    log_ = new std::string(env_->dir() + "/server.log");
    server_ =
        testing::ServerProcess::Start(env_->config_path(), *log_)->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete env_;
    delete log_;
  }

  // Issues pki/NAME.crt from the test CA with `subject` and `ext` lines.
  static void IssueRaw(const std::string& name, const std::string& subject,
                       const std::string& ext) {
    const std::string pki = env_->pki("");
    const std::string ca = env_->dir() + "/ca";
    std::ofstream(env_->dir() + "/" + name + ".ext")
        << "basicConstraints=critical,CA:FALSE\n"
        << "keyUsage=critical,digitalSignature\n"
        << "extendedKeyUsage=clientAuth\n"
        << ext << "\n";
    testing::RunOrDie(absl::StrCat(
        "cd ", env_->dir(), " && openssl ecparam -name prime256v1 -genkey ",
        "-noout -out ", name, ".ec 2>/dev/null && openssl pkcs8 -topk8 ",
        "-nocrypt -in ", name, ".ec -out ", pki, name, ".key && openssl req ",
        "-new -key ", name, ".ec -subj '", subject, "' -out ", name,
        ".csr && openssl x509 -req -in ", name, ".csr -CA ", ca,
        "/ca.crt -CAkey ", ca, "/ca.key -set_serial 0x$(openssl rand -hex ",
        "16) -days 2 -sha256 -extfile ", name, ".ext -out ", pki, name,
        ".crt 2>/dev/null"));
  }

  static std::unique_ptr<client::VaultClient> Client(absl::string_view name) {
    return testing::ClientFor(*env_, server_->address(), name);
  }
  static std::unique_ptr<grpc::GenericStub> Stub(absl::string_view name) {
    return std::make_unique<grpc::GenericStub>(*client::CreateMutualTlsChannel(
        testing::ClientOptionsFor(*env_, server_->address(), name)));
  }
  static v1::Card Card(absl::string_view pan = kPan) {
    v1::Card c;
    c.set_pan(std::string(pan));
    return c;
  }
  static std::vector<v1::AuditEvent> Events(v1::EventType type) {
    v1::ListEventsRequest request;
    request.set_event_type(type);
    std::vector<v1::AuditEvent> out;
    EXPECT_THAT(
        Client("auditor")->ListAuditEvents(
            request, [&](const v1::AuditEvent& e) { out.push_back(e); }),
        IsOk());
    return out;
  }
  static v1::AuditEvent LastEvent(v1::EventType type) {
    std::vector<v1::AuditEvent> all = Events(type);
    return all.empty() ? v1::AuditEvent() : all.back();
  }

  static testing::TestEnv* env_;
  static std::string* log_;
  static testing::ServerProcess* server_;
};

testing::TestEnv* HostileCallerTest::env_ = nullptr;
std::string* HostileCallerTest::log_ = nullptr;
testing::ServerProcess* HostileCallerTest::server_ = nullptr;

TEST_F(HostileCallerTest, CommonNameCannotPassForAUriIdentity) {
  const std::string token = *Client("pos")->Tokenize(Card());
  // The CN spells the processor's URI, but is the identity
  // "cn:spiffe://cardvault.test/processor", which no binding names.
  EXPECT_THAT(Client("cn-processor")->Detokenize(token, "authorization"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  const v1::AuditEvent denied = LastEvent(v1::DETOKENIZE);
  EXPECT_EQ(denied.identity_source(), v1::COMMON_NAME);
  EXPECT_THAT(denied.identity(), StartsWith("<unverified len="));
  // A bound CN identity works, and says where it came from.
  EXPECT_THAT(Client("cn-lane")->Tokenize(Card()), IsOk());
  const v1::AuditEvent lane = LastEvent(v1::TOKENIZE);
  EXPECT_EQ(lane.identity(), "cn:lane-7");
  EXPECT_EQ(lane.identity_source(), v1::COMMON_NAME);
  // A URI SAN in the cn: scheme is refused outright.
  EXPECT_THAT(Client("cn-scheme")->Tokenize(Card()),
              StatusIs(absl::StatusCode::kUnauthenticated));
  // And the processor itself is recorded from its URI SAN.
  ASSERT_THAT(Client("processor")->Detokenize(token, "authorization"), IsOk());
  EXPECT_EQ(LastEvent(v1::DETOKENIZE).identity_source(), v1::URI_SAN);
}

TEST_F(HostileCallerTest, ANewlineInACertificateCannotForgeALogLine) {
  auto evil = Client("newline");
  EXPECT_THAT(evil->Tokenize(Card()),
              StatusIs(absl::StatusCode::kPermissionDenied));
  const std::string log = testing::ReadFileOrEmpty(*log_);
  for (const std::string& line :
       std::vector<std::string>(absl::StrSplit(log, '\n'))) {
    EXPECT_THAT(line, Not(StartsWith("2030-01-01T00:00:00.000Z")));
  }
  EXPECT_THAT(log, Not(HasSubstr("\nFORGED")));
  // The unlisted identity is recorded as a marker, never as sent.
  const v1::AuditEvent e = LastEvent(v1::TOKENIZE);
  EXPECT_THAT(e.identity(), StartsWith("<unverified len="));
  EXPECT_THAT(e.SerializeAsString(), Not(HasSubstr("FORGED")));
}

TEST_F(HostileCallerTest, UnknownFieldsAreRefusedByEveryService) {
  for (const auto& [name, method] :
       {std::pair{"auditor", "/cardvault.v1.AuditLog/VerifyChain"},
        std::pair{"auditor", "/cardvault.v1.AuditLog/ListEvents"},
        std::pair{"admin", "/cardvault.v1.KeyAdmin/ListKeys"},
        std::pair{"admin", "/cardvault.v1.KeyAdmin/ListOperations"},
        std::pair{"admin", "/cardvault.v1.KeyAdmin/ApproveOperation"},
        std::pair{"pos", "/cardvault.v1.TokenVault/GetTokenInfo"}}) {
    SCOPED_TRACE(method);
    auto stub = Stub(name);
    const grpc::Status s =
        testing::CallGeneric(stub.get(), method, std::string(kUnknownField));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("fields this server does not"));
  }
  // Also inside a nested message: a Checkpoint with field 99.
  v1::VerifyChainRequest verify;
  verify.mutable_expected_checkpoint()->set_sequence(1);
  std::string bytes = verify.SerializeAsString();
  // Field 1 (expected_checkpoint) re-sent with the unknown field inside.
  bytes += std::string("\x0a\x04", 2) + kUnknownField;
  auto stub = Stub("auditor");
  EXPECT_EQ(testing::CallGeneric(stub.get(),
                                 "/cardvault.v1.AuditLog/VerifyChain", bytes)
                .error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(HostileCallerTest, RequestsThatDoNotParseGetInvalidArgumentAndARecord) {
  const size_t before = Events(v1::TOKENIZE).size();
  // TokenizeRequest.domain (field 2) with bytes that are not UTF-8.
  v1::TokenizeRequest request;
  *request.mutable_card() = Card();
  const std::string bad = request.SerializeAsString() + "\x12\x02\xff\xfe";
  auto stub = Stub("pos");
  grpc::Status s = testing::CallGeneric(
      stub.get(), "/cardvault.v1.TokenVault/Tokenize", bad);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("does not parse"));
  // Truncated protobuf on a synchronous service.
  auto auditor = Stub("auditor");
  s = testing::CallGeneric(auditor.get(), "/cardvault.v1.AuditLog/ListEvents",
                           "\x0a\x05\x08");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Both are in the trail (the write is not waited for: poll briefly).
  bool recorded = false;
  for (int i = 0; i < 50 && !recorded; ++i) {
    const std::vector<v1::AuditEvent> events = Events(v1::TOKENIZE);
    recorded = events.size() == before + 1 &&
               events.back().status_code() ==
                   static_cast<int>(absl::StatusCode::kInvalidArgument) &&
               events.back().identity() == testing::TestEnv::Identity("pos");
    if (!recorded) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(recorded);
}

TEST_F(HostileCallerTest, DurationsAndTimestampsMustBeValid) {
  v1::TokenizeRequest request;
  *request.mutable_card() = Card();
  request.mutable_ttl()->set_nanos(2'000'000'000);
  EXPECT_THAT(Client("pos")->Tokenize(request),
              StatusIs(absl::StatusCode::kInvalidArgument));
  request.mutable_ttl()->set_seconds(3600);
  request.mutable_ttl()->set_nanos(-5);
  EXPECT_THAT(Client("pos")->Tokenize(request),
              StatusIs(absl::StatusCode::kInvalidArgument));
  v1::ListEventsRequest list;
  list.mutable_start_time()->set_seconds(1'700'000'000);
  list.mutable_start_time()->set_nanos(-1);
  EXPECT_THAT(
      Client("auditor")->ListAuditEvents(list, [](const v1::AuditEvent&) {}),
      StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(HostileCallerTest, RefusedDetokenizeRecordsTheTokenItAskedFor) {
  const std::string token = *Client("pos")->Tokenize(Card());
  EXPECT_THAT(Client("processor")->Detokenize(token, "curiosity"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  const v1::AuditEvent e = LastEvent(v1::DETOKENIZE);
  EXPECT_EQ(e.token(), token);
  EXPECT_THAT(e.purpose(), StartsWith("<unverified len=9 "));
}

TEST_F(HostileCallerTest, ValuesThatAreNotWhatTheyClaimAreRecordedAsMarkers) {
  v1::TokenizeRequest request;
  *request.mutable_card() = Card();
  request.set_domain("5105105105105100");
  EXPECT_THAT(Client("pos")->Tokenize(request),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(LastEvent(v1::TOKENIZE).domain(),
              StartsWith("<unverified len=16 mac="));
  v1::ListEventsRequest list;
  list.set_token("378734493671000");
  list.set_identity("4012888888881881");
  ASSERT_THAT(
      Client("auditor")->ListAuditEvents(list, [](const v1::AuditEvent&) {}),
      IsOk());
  // The last LIST_EVENTS record is the read made by Events itself.
  std::vector<v1::AuditEvent> reads = Events(v1::LIST_EVENTS);
  ASSERT_GE(reads.size(), 2u);
  const v1::AuditEvent read = reads[reads.size() - 2];
  EXPECT_THAT(read.token(), StartsWith("<unverified len=15 mac="));
  EXPECT_THAT(read.detail(), HasSubstr("identity=<unverified len=16 mac="));
  for (const v1::AuditEvent& e : Events(v1::EVENT_TYPE_UNSPECIFIED)) {
    const std::string bytes = e.SerializeAsString();
    EXPECT_THAT(bytes, Not(HasSubstr("5105105105105100")));
    EXPECT_THAT(bytes, Not(HasSubstr("378734493671000")));
    EXPECT_THAT(bytes, Not(HasSubstr("4012888888881881")));
  }
}

TEST_F(HostileCallerTest, AFloodOfRefusedCallsGrowsTheTrailByABoundedAmount) {
  auto count_records = [] {
    size_t n = 0, bytes = 0;
    for (const v1::AuditEvent& e : Events(v1::EVENT_TYPE_UNSPECIFIED)) {
      ++n;
      bytes += e.ByteSizeLong();
    }
    return std::pair{n, bytes};
  };
  const auto [records_before, bytes_before] = count_records();
  // An identity the policy does not name sends 300 audit reads, each with a
  // 400 KiB token filter.
  v1::ListEventsRequest flood;
  flood.set_token(std::string(400 << 10, '7'));
  auto stranger = Client("stranger");
  for (int i = 0; i < 300; ++i) {
    ASSERT_THAT(stranger->ListAuditEvents(flood, [](const v1::AuditEvent&) {}),
                StatusIs(absl::StatusCode::kPermissionDenied));
  }
  const auto [records_after, bytes_after] = count_records();
  // At most the burst (20) recorded one by one, each small; the rest are
  // counted and summarised once a minute.
  EXPECT_LE(records_after - records_before, 20u + 10u);
  EXPECT_LE(bytes_after - bytes_before, (20u + 10u) * 1024u);
  EXPECT_THAT(testing::ReadFileOrEmpty(*log_),
              Not(HasSubstr(std::string(64, '7'))));
}

TEST_F(HostileCallerTest, OneIdentityCannotHoldMoreThanItsCallsInFlight) {
  // max_calls_per_identity is 4 here; 32 callers of one identity at once.
  std::atomic<int> ok{0}, exhausted{0}, other{0};
  std::vector<std::thread> threads;
  const std::vector<std::string> pans = testing::MakePans(32, 7);
  for (int t = 0; t < 32; ++t) {
    threads.emplace_back([&, t] {
      auto pos = Client("pos");
      for (int i = 0; i < 5; ++i) {
        absl::StatusOr<std::string> r = pos->Tokenize(Card(pans[t]));
        if (r.ok()) {
          ++ok;
        } else if (absl::IsResourceExhausted(r.status())) {
          ++exhausted;
        } else {
          ++other;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_GT(ok.load(), 0);
  EXPECT_GT(exhausted.load(), 0);
  EXPECT_EQ(other.load(), 0);
  // Another identity is served meanwhile and after.
  EXPECT_THAT(Client("cn-lane")->Tokenize(Card()), IsOk());
}

// Resident size of process `pid` in KiB (VmRSS).
size_t ResidentKib(pid_t pid) {
  const std::string status =
      testing::ReadFileOrEmpty(absl::StrCat("/proc/", pid, "/status"));
  const size_t at = status.find("VmRSS:");
  return at == std::string::npos
             ? 0
             : std::strtoul(status.c_str() + at + 6, nullptr, 10);
}

TEST_F(HostileCallerTest, StreamsOfAnUnlistedCallerAreBoundedPerConnection) {
  // Health.Watch streams (health may be watched by any certificate of the
  // client CA), 300 asked for on each of 8 connections.
  constexpr int kConnections = 8;
  constexpr int kAskedPerConnection = 300;
  const size_t rss_before = ResidentKib(server_->pid());
  grpc::CompletionQueue cq;
  struct Watch {
    grpc::ClientContext context;
    std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call;
    grpc::ByteBuffer response;
  };
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  std::vector<std::unique_ptr<Watch>> watches;
  for (int c = 0; c < kConnections; ++c) {
    client::ClientOptions o =
        testing::ClientOptionsFor(*env_, server_->address(), "stranger");
    o.separate_connection_index = c;
    stubs.push_back(std::make_unique<grpc::GenericStub>(
        *client::CreateMutualTlsChannel(o)));
    for (int i = 0; i < kAskedPerConnection; ++i) {
      auto w = std::make_unique<Watch>();
      w->call = stubs.back()->PrepareCall(&w->context,
                                          "/grpc.health.v1.Health/Watch", &cq);
      w->call->StartCall(w.get());
      watches.push_back(std::move(w));
    }
  }
  // A stream is open at the server once its first answer comes back.
  std::map<void*, int> step;
  int answered = 0;
  const auto deadline =
      std::chrono::system_clock::now() + std::chrono::seconds(3);
  void* tag = nullptr;
  bool ok = false;
  while (cq.AsyncNext(&tag, &ok, deadline) ==
         grpc::CompletionQueue::GOT_EVENT) {
    Watch* w = static_cast<Watch*>(tag);
    const int s = step[tag]++;
    if (!ok) continue;
    if (s == 0) {
      grpc::Slice empty("", 0);
      grpc::ByteBuffer request(&empty, 1);
      w->call->WriteLast(request, grpc::WriteOptions(), w);
    } else if (s == 1) {
      w->call->Read(&w->response, w);
    } else if (s == 2) {
      ++answered;
    }
  }
  const size_t rss_during = ResidentKib(server_->pid());
  // At most max_concurrent_streams (100) per connection were served.
  EXPECT_LE(answered, kConnections * 100);
  EXPECT_GE(answered, kConnections * 90);
  const size_t grown_kib =
      rss_during > rss_before ? rss_during - rss_before : 0;
  std::cerr << "streams served: " << answered << " of "
            << kConnections * kAskedPerConnection << "; server RSS "
            << rss_before << " -> " << rss_during << " KiB\n";
  // The bound the README states: under 64 MiB for these 800 streams.
  EXPECT_LT(grown_kib, 64u * 1024u);
  // Cancel all; finish each call once it has no operation outstanding.
  std::vector<grpc::Status> statuses(watches.size());
  std::map<void*, size_t> index;
  for (size_t i = 0; i < watches.size(); ++i) {
    index[watches[i].get()] = i;
    watches[i]->context.TryCancel();
  }
  auto finish = [&](void* t) {
    step[t] = 100;
    static_cast<Watch*>(t)->call->Finish(&statuses[index[t]], t);
  };
  for (auto& w : watches) {
    if (step[w.get()] == 3) finish(w.get());  // answered: nothing pending
  }
  size_t finished = 0;
  while (finished < watches.size() &&
         cq.AsyncNext(
             &tag, &ok,
             std::chrono::system_clock::now() + std::chrono::seconds(10)) ==
             grpc::CompletionQueue::GOT_EVENT) {
    if (step[tag] < 100) {
      finish(tag);
    } else {
      ++finished;
    }
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  // The vault still serves others.
  EXPECT_THAT(Client("cn-lane")->Tokenize(Card()), IsOk());
}

TEST_F(HostileCallerTest, MalformedMetadataQuotedByGrpcLeavesNoPanInTheLog) {
  // gRPC's own parser logs the value of a malformed grpc-* header; sent raw
  // over HTTP/2 (curl), as a client library would not.
  const std::string pki = env_->pki("");
  for (const char* value :
       {"4111 1111 1111 1111", "5105-1051-0510-5100", "378282246310005"}) {
    testing::RunOrDie(absl::StrCat(
        "curl -s --http2 --max-time 5 --cacert ", pki, "ca.crt --cert ", pki,
        "pos.crt --key ", pki, "pos.key -H 'content-type: application/grpc' ",
        "-H 'te: trailers' -H 'grpc-encoding: ", value,
        "' --data-binary '' -o /dev/null https://127.0.0.1:", server_->port(),
        "/cardvault.v1.TokenVault/Tokenize || true"));
  }
  absl::SleepFor(absl::Milliseconds(200));
  const std::string log = testing::ReadFileOrEmpty(*log_);
  EXPECT_THAT(log, Not(HasSubstr("4111 1111 1111 1111")));
  EXPECT_THAT(log, Not(HasSubstr("5105-1051-0510-5100")));
  EXPECT_THAT(log, Not(HasSubstr("378282246310005")));
  // gRPC did log the headers, through cardvaultd's logger.
  EXPECT_THAT(log, HasSubstr("cardvaultd: grpc "));
}

TEST(HostileFilesTest, ServerRefusesToStartWithFilesOthersMayChange) {
  auto env = testing::TestEnv::Create();
  const std::string log = env->dir() + "/server.log";
  for (const auto& [path, mode, what] :
       {std::tuple{env->policy_path(), 0664, "policy file"},
        std::tuple{env->config_path(), 0646, "config file"},
        std::tuple{env->pin_file(), 0640, "HSM PIN file"}}) {
    SCOPED_TRACE(what);
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    ASSERT_EQ(chmod(path.c_str(), mode), 0);
    auto server = testing::ServerProcess::Start(env->config_path(), log);
    EXPECT_THAT(server.status(),
                StatusIs(absl::StatusCode::kFailedPrecondition,
                         AllOf(HasSubstr(what), HasSubstr(path),
                               HasSubstr(absl::StrFormat("mode %04o", mode)))));
    ASSERT_EQ(chmod(path.c_str(), st.st_mode & 07777), 0);
  }
  EXPECT_THAT(testing::ServerProcess::Start(env->config_path(), log), IsOk());
}

}  // namespace
}  // namespace cardvault
