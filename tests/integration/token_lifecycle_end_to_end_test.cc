// Token formats, metadata, batches, deletion, TTL and CVVs through a real
// cardvaultd over mutual TLS (SoftHSM2 keys, RocksDB records), including
// kill -9 of the server.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <latch>
#include <numeric>
#include <random>
#include <set>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/vault_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/card_data_scan.h"
#include "tests/testing/clients.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_cards.h"
#include "tests/testing/test_env.h"

namespace cardvault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::IsOkAndHolds;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;

class TokenLifecycleEndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // On PostgreSQL its log holds every statement with its bound values,
    // searched for CVVs.
    env_ = testing::TestEnv::Create({.log_postgres_statements = true});
    log_ = env_->dir() + "/server.log";
    port_ = testing::PickUnusedPort();
    Start();
  }
  void Start() {
    auto server =
        testing::ServerProcess::Start(env_->config_path(), log_, port_);
    ASSERT_THAT(server, IsOk());
    server_ = *std::move(server);
  }
  std::unique_ptr<client::VaultClient> Client(absl::string_view name) {
    return testing::ClientFor(*env_, server_->address(), name);
  }
  static v1::TokenizeRequest Request(const std::string& pan,
                                     v1::TokenFormat format = v1::RANDOM) {
    v1::TokenizeRequest r;
    r.mutable_card()->set_pan(pan);
    r.mutable_card()->set_exp_month(12);
    r.mutable_card()->set_exp_year(2035);
    r.set_format(format);
    return r;
  }

  // What CvvNeverReachesAFileAndIsReturnedOnce finds in the stopped vault's
  // files.
  void ExpectNoCvvInRocksDb(const std::vector<std::string>& sent,
                            const std::vector<std::string>& control,
                            const std::vector<std::string>& pans,
                            const std::vector<std::string>& tokens);
  void ExpectNoCvvInPostgres(const std::vector<std::string>& sent,
                             const std::vector<std::string>& control,
                             const std::vector<std::string>& pans,
                             const std::vector<std::string>& tokens);

  std::unique_ptr<testing::TestEnv> env_;
  std::string log_;
  int port_ = 0;
  std::unique_ptr<testing::ServerProcess> server_;
};

TEST_F(TokenLifecycleEndToEndTest, FormatsAndMetadataOverTheWire) {
  auto pos = Client("pos");
  const std::string pan = "5555555555554444";
  auto last4 = pos->Tokenize(Request(pan, v1::LAST_FOUR));
  ASSERT_THAT(last4, IsOk());
  EXPECT_EQ(last4->token().size(), pan.size());
  EXPECT_EQ(last4->token().substr(12), "4444");
  EXPECT_TRUE(last4->created());
  auto bin = pos->Tokenize(Request(pan, v1::BIN_LAST_FOUR));
  ASSERT_THAT(bin, IsOk());
  EXPECT_EQ(bin->token().substr(0, 6), "555555");
  auto info = Client("auditor")->GetTokenInfo(bin->token());
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->brand(), v1::MASTERCARD);
  EXPECT_EQ(info->bin(), "555555");
  EXPECT_EQ(info->last_four(), "4444");
  EXPECT_EQ(info->format(), v1::BIN_LAST_FOUR);
  EXPECT_EQ(info->domain(), "dev-merchant/pos");
  EXPECT_THAT(info->fingerprint(), StartsWith("fp_"));
  EXPECT_FALSE(info->has_expire_time());
  // Nothing in the metadata reveals the middle digits.
  EXPECT_THAT(info->DebugString(), Not(HasSubstr(pan)));
  // The processor may detokenize, but has no metadata right.
  EXPECT_THAT(Client("processor")->GetTokenInfo(bin->token()),
              StatusIs(absl::StatusCode::kPermissionDenied));
  auto card = Client("processor")->Detokenize(bin->token(), "authorization");
  ASSERT_THAT(card, IsOk());
  EXPECT_EQ(card->pan(), pan);
  // An unknown format value is refused, not mapped to a default.
  v1::TokenizeRequest odd = Request(pan);
  odd.set_format(static_cast<v1::TokenFormat>(42));
  EXPECT_THAT(pos->Tokenize(odd), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(TokenLifecycleEndToEndTest, ConcurrentDeterministicCallsGiveOneToken) {
  constexpr int kCalls = 16;
  std::vector<std::unique_ptr<client::VaultClient>> clients;
  for (int i = 0; i < kCalls; ++i) clients.push_back(Client("pos"));
  std::vector<std::string> tokens(kCalls);
  std::latch start(kCalls);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] {
      v1::TokenizeRequest r = Request("4111111111111111", v1::LAST_FOUR);
      r.set_deterministic(true);
      start.arrive_and_wait();
      // A full executor queue refuses a call (RESOURCE_EXHAUSTED), and on a
      // machine busy with other tests one of 16 simultaneous TLS handshakes
      // has failed (UNAVAILABLE, the call never sent); a client retries
      // both, as any would. What is asserted is one token for all.
      absl::StatusOr<v1::TokenizeResponse> t;
      // Retries outlast gRPC's first reconnect backoff (1 s with jitter),
      // during which a channel whose handshake failed fails fast.
      for (int attempt = 0; attempt < 8; ++attempt) {
        t = clients[i]->Tokenize(r);
        if (!absl::IsResourceExhausted(t.status()) &&
            !absl::IsUnavailable(t.status())) {
          break;
        }
        absl::SleepFor(absl::Milliseconds(300));
      }
      if (t.ok()) {
        tokens[i] = t->token();
      } else {
        ADD_FAILURE() << "call " << i << ": " << t.status();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_THAT(tokens, Not(::testing::Contains(IsEmpty())));
  EXPECT_EQ(std::set<std::string>(tokens.begin(), tokens.end()).size(), 1u);
  // The other domain of the same merchant: its own token and fingerprint.
  v1::TokenizeRequest web = Request("4111111111111111", v1::LAST_FOUR);
  web.set_deterministic(true);
  web.set_domain("dev-merchant/ecommerce");
  auto other = Client("pos")->Tokenize(web);
  ASSERT_THAT(other, IsOk());
  EXPECT_NE(other->token(), tokens[0]);
  auto auditor = Client("auditor");
  EXPECT_NE(auditor->GetTokenInfo(other->token())->fingerprint(),
            auditor->GetTokenInfo(tokens[0])->fingerprint());
}

TEST_F(TokenLifecycleEndToEndTest, BatchResultsKeepOrderAndSurviveKill9) {
  const std::vector<std::string> pans = testing::MakePans(1000, 7);
  v1::TokenizeBatchRequest batch;
  std::vector<bool> valid;
  for (size_t i = 0; i < pans.size(); ++i) {
    std::string pan = pans[i];
    const bool bad = i % 97 == 5;
    if (bad) pan.back() = pan.back() == '0' ? '1' : '0';  // breaks Luhn
    *batch.add_requests() = Request(
        pan, i % 3 == 0 ? v1::RANDOM
                        : (i % 3 == 1 ? v1::LAST_FOUR : v1::BIN_LAST_FOUR));
    valid.push_back(!bad);
  }
  auto response = Client("pos")->TokenizeBatch(batch);
  ASSERT_THAT(response, IsOk());
  ASSERT_EQ(response->results_size(), 1000);
  v1::DetokenizeBatchRequest back;
  std::vector<size_t> index;
  for (int i = 0; i < response->results_size(); ++i) {
    const auto& r = response->results(i);
    if (!valid[i]) {
      EXPECT_EQ(r.status().code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_THAT(r.status().message(), Not(HasSubstr(pans[i].substr(0, 12))));
      continue;
    }
    ASSERT_EQ(r.status().code(), 0) << i << ": " << r.status().message();
    auto* d = back.add_requests();
    d->set_token(r.response().token());
    d->set_purpose("authorization");
    index.push_back(i);
  }
  // Acknowledged, then the server dies without warning.
  server_->Kill9();
  Start();
  auto cards = Client("processor")->DetokenizeBatch(back);
  ASSERT_THAT(cards, IsOk());
  ASSERT_EQ(cards->results_size(), back.requests_size());
  for (int k = 0; k < cards->results_size(); ++k) {
    ASSERT_EQ(cards->results(k).status().code(), 0) << k;
    ASSERT_EQ(cards->results(k).response().card().pan(), pans[index[k]]) << k;
  }
}

TEST_F(TokenLifecycleEndToEndTest, DeletedAndExpiredTokensAreNotFound) {
  auto pos = Client("pos");
  auto processor = Client("processor");
  auto kept = pos->Tokenize(Request("4111111111111111"));
  auto doomed = pos->Tokenize(Request("5555555555554444"));
  v1::TokenizeRequest brief = Request("378282246310005");
  brief.mutable_ttl()->set_seconds(1);
  auto expiring = pos->Tokenize(brief);
  ASSERT_THAT(kept, IsOk());
  ASSERT_THAT(doomed, IsOk());
  ASSERT_THAT(expiring, IsOk());
  ASSERT_TRUE(expiring->has_expire_time());
  EXPECT_THAT(pos->DeleteToken(doomed->token()), IsOkAndHolds(true));
  EXPECT_THAT(pos->DeleteToken(doomed->token()), IsOkAndHolds(false));
  EXPECT_THAT(processor->Detokenize(doomed->token(), "refund"),
              StatusIs(absl::StatusCode::kNotFound));
  // Wait until the token's own expiry time has passed (not a timing
  // assertion: the server's clock decides).
  const absl::Time expires =
      absl::FromUnixSeconds(expiring->expire_time().seconds()) +
      absl::Nanoseconds(expiring->expire_time().nanos());
  absl::SleepFor(expires - absl::Now() + absl::Milliseconds(50));
  EXPECT_THAT(processor->Detokenize(expiring->token(), "refund"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(processor->Detokenize(kept->token(), "refund"), IsOk());
  EXPECT_THAT(processor->DeleteToken(kept->token()),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST_F(TokenLifecycleEndToEndTest, CompactAndExitWaitsForAStoppedVault) {
  auto pos = Client("pos");
  auto kept = pos->Tokenize(Request("4111111111111111"));
  auto doomed = pos->Tokenize(Request("5555555555554444"));
  ASSERT_THAT(kept, IsOk());
  ASSERT_THAT(doomed, IsOk());
  ASSERT_THAT(pos->DeleteToken(doomed->token()), IsOkAndHolds(true));
  const std::string compact =
      absl::StrCat(CARDVAULTD_PATH, " --config=", env_->config_path(),
                   " --compact_and_exit >>", log_, " 2>&1");
  // The running vault holds the database: the maintenance run is refused.
  EXPECT_NE(std::system(compact.c_str()), 0);
  EXPECT_THAT(testing::ReadFileOrEmpty(log_), Not(HasSubstr("compacted")));
  ASSERT_EQ(server_->Terminate(), 0);
  if (testing::OnPostgres()) {
    // PostgreSQL reclaims deleted rows itself (autovacuum): the maintenance
    // run is RocksDB's, refused on PostgreSQL whether the vault runs or not,
    // and saying why.
    EXPECT_NE(std::system(compact.c_str()), 0);
    EXPECT_THAT(testing::ReadFileOrEmpty(log_),
                HasSubstr("--compact_and_exit, --verify_backup, "
                          "--restore_backup and --data_dir are for "
                          "storage.rocksdb"));
    EXPECT_THAT(testing::ReadFileOrEmpty(log_), Not(HasSubstr("compacted")));
  } else {
    EXPECT_EQ(std::system(compact.c_str()), 0);
    EXPECT_THAT(testing::ReadFileOrEmpty(log_),
                HasSubstr("token data compacted"));
  }
  // Live tokens survive it; the deleted one stays gone.
  Start();
  auto processor = Client("processor");
  auto card = processor->Detokenize(kept->token(), "refund");
  ASSERT_THAT(card, IsOk());
  EXPECT_EQ(card->pan(), "4111111111111111");
  EXPECT_THAT(processor->Detokenize(doomed->token(), "refund"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(TokenLifecycleEndToEndTest, IdempotentRetryOverTheWire) {
  auto pos = Client("pos");
  v1::TokenizeRequest r = Request("6011111111111117");
  r.set_idempotency_key("order-2026-11-25-0001");
  auto first = pos->Tokenize(r);
  auto retry = pos->Tokenize(r);
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT(retry, IsOk());
  EXPECT_EQ(first->token(), retry->token());
  EXPECT_TRUE(first->created());
  EXPECT_FALSE(retry->created());
  r.mutable_card()->set_pan("4111111111111111");
  auto misuse = pos->Tokenize(r);
  EXPECT_THAT(misuse, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(misuse.status().message(), Not(HasSubstr("order-2026")));
}

// Invariant 1 for CVVs (PCI DSS 3.3.1.2): a CVV is held only in memory,
// returned once, and never reaches a file. A 4-digit value cannot be
// searched for exactly in megabytes of binary data and RocksDB's numeric
// logs (it occurs by chance), so the scan compares the CVVs sent with an
// equally sized control set of values never sent: a leak would make every
// sent value appear. The encoded request field is searched for exactly.
TEST_F(TokenLifecycleEndToEndTest, CvvNeverReachesAFileAndIsReturnedOnce) {
  constexpr int kCards = 200;
  std::mt19937_64 rng(3331);
  std::vector<int> values(9000);
  std::iota(values.begin(), values.end(), 1000);
  std::shuffle(values.begin(), values.end(), rng);
  std::vector<std::string> sent, control;
  for (int i = 0; i < kCards; ++i) {
    sent.push_back(std::to_string(values[i]));
    control.push_back(std::to_string(values[kCards + i]));
  }
  const std::vector<std::string> pans = testing::MakePans(kCards, 11);
  // A CVV is held by the node that took it, in its memory alone. With two
  // nodes the processor asks the other one, which takes each CVV from its
  // holder (NodePeer.TakeHeldCvv).
  auto pos = testing::ClientFor(*env_, server_->node_address(0), "pos");
  auto processor = testing::ClientFor(
      *env_, server_->node_address(server_->node_count() - 1), "processor");
  std::vector<std::string> tokens;
  for (int i = 0; i < kCards; ++i) {
    v1::TokenizeRequest r = Request(pans[i]);
    r.set_cvv(sent[i]);
    auto t = pos->Tokenize(r);
    ASSERT_THAT(t, IsOk());
    tokens.push_back(t->token());
  }
  // Half are used for an authorization: the CVV comes back once.
  for (int i = 0; i < kCards / 2; ++i) {
    v1::DetokenizeRequest d;
    d.set_token(tokens[i]);
    d.set_purpose("authorization");
    auto first = processor->Detokenize(d);
    ASSERT_THAT(first, IsOk());
    EXPECT_EQ(first->cvv(), sent[i]);
    auto second = processor->Detokenize(d);
    ASSERT_THAT(second, IsOk());
    EXPECT_THAT(second->cvv(), IsEmpty());
  }
  server_->Kill9();
  if (testing::OnPostgres()) {
    ASSERT_NO_FATAL_FAILURE(ExpectNoCvvInPostgres(sent, control, pans, tokens));
  } else {
    ASSERT_NO_FATAL_FAILURE(ExpectNoCvvInRocksDb(sent, control, pans, tokens));
  }

  // After the crash the vault still has every card, and no CVV at all.
  Start();
  auto after = Client("processor");
  for (int i = kCards / 2; i < kCards; ++i) {
    v1::DetokenizeRequest d;
    d.set_token(tokens[i]);
    d.set_purpose("authorization");
    auto card = after->Detokenize(d);
    ASSERT_THAT(card, IsOk());
    EXPECT_EQ(card->card().pan(), pans[i]);
    EXPECT_THAT(card->cvv(), IsEmpty());
  }
}

void TokenLifecycleEndToEndTest::ExpectNoCvvInRocksDb(
    const std::vector<std::string>& sent,
    const std::vector<std::string>& control,
    const std::vector<std::string>& pans,
    const std::vector<std::string>& tokens) {
  const int kCards = static_cast<int>(sent.size());
  const auto files = testing::ReadTree(env_->data_dir());
  auto count_present = [&](const std::vector<std::string>& needles,
                           bool diagnostics) {
    int present = 0;
    for (const std::string& n : needles) {
      for (const auto& [path, bytes] : files) {
        const std::string name = std::filesystem::path(path).filename();
        const bool is_diag =
            absl::StartsWith(name, "LOG") || absl::StartsWith(name, "OPTIONS");
        if (is_diag == diagnostics && absl::StrContains(bytes, n)) {
          ++present;
          break;
        }
      }
    }
    return present;
  };
  for (const std::string& cvv : sent) {
    const std::string field = absl::StrCat("\x3a\x04", cvv);  // field 7
    EXPECT_THAT(testing::FilesContaining(env_->data_dir(), field), IsEmpty());
  }
  const int sent_in_data = count_present(sent, false);
  const int control_in_data = count_present(control, false);
  const int sent_in_logs = count_present(sent, true);
  const int control_in_logs = count_present(control, true);
  std::cout << "4-digit values found in data files: sent " << sent_in_data
            << "/" << kCards << ", control " << control_in_data << "/" << kCards
            << "; in RocksDB LOG/OPTIONS: sent " << sent_in_logs << ", control "
            << control_in_logs << "\n";
  // Chance hits are binomial around the control's count; a leak puts all
  // kCards in. The margin is five standard deviations and more.
  auto margin = [](int control) { return 5 + 5 * std::sqrt(control + 1.0); };
  EXPECT_LE(sent_in_data, control_in_data + margin(control_in_data));
  EXPECT_LE(sent_in_logs, control_in_logs + margin(control_in_logs));
  EXPECT_LT(sent_in_data, kCards);
  EXPECT_LT(sent_in_logs, kCards);
  // RocksDB's diagnostics never hold values: no PAN, no token.
  for (const auto& [path, bytes] : files) {
    const std::string name = std::filesystem::path(path).filename();
    if (!absl::StartsWith(name, "LOG") && !absl::StartsWith(name, "OPTIONS")) {
      continue;
    }
    for (int i = 0; i < kCards; ++i) {
      ASSERT_THAT(bytes, Not(HasSubstr(pans[i]))) << path;
      ASSERT_THAT(bytes, Not(HasSubstr(tokens[i]))) << path;
    }
  }
}

// The same on PostgreSQL: the files of the database (stopped, so that its
// checkpoint has written every page; started again after) and its log,
// which holds every statement with its bound values (bytea decoded from
// hex), in place of RocksDB's data files and its LOG/OPTIONS. The log does
// hold tokens (bound values); it must hold no PAN.
void TokenLifecycleEndToEndTest::ExpectNoCvvInPostgres(
    const std::vector<std::string>& sent,
    const std::vector<std::string>& control,
    const std::vector<std::string>& pans,
    const std::vector<std::string>& tokens) {
  const int kCards = static_cast<int>(sent.size());
  testing::PostgresServer& pg = *env_->postgres();
  ASSERT_THAT(pg.Stop(), IsOk());
  const std::string raw_log = testing::ReadFileOrEmpty(pg.log_file());
  EXPECT_THAT(raw_log, HasSubstr("parameters: $1 = "));
  const std::vector<std::pair<std::string, std::string>> data =
      testing::ReadTree(pg.data_directory());
  const std::vector<std::pair<std::string, std::string>> logs = {
      {pg.log_file() + " (bytea decoded)", testing::WithHexDecoded(raw_log)}};
  // What is searched holds the bound values: the tokens, for one.
  EXPECT_THAT(logs[0].second, HasSubstr(tokens[0]));
  const absl::flat_hash_set<std::string> sent_set(sent.begin(), sent.end());
  for (const auto* files : {&data, &logs}) {
    for (const auto& [path, bytes] : *files) {
      // field 7 of the request, as encoded
      EXPECT_THAT(testing::DigitStringsAfter(bytes, "\x3a\x04", sent_set),
                  IsEmpty())
          << path;
    }
  }
  auto count_present = [&](const std::vector<std::string>& needles,
                           bool diagnostics) {
    const absl::flat_hash_set<std::string> wanted(needles.begin(),
                                                  needles.end());
    absl::flat_hash_set<std::string> present;
    for (const auto& [path, bytes] : diagnostics ? logs : data) {
      for (const std::string& v : testing::DigitStringsIn(bytes, wanted)) {
        present.insert(v);
      }
    }
    return static_cast<int>(present.size());
  };
  const int sent_in_data = count_present(sent, false);
  const int control_in_data = count_present(control, false);
  const int sent_in_logs = count_present(sent, true);
  const int control_in_logs = count_present(control, true);
  std::cout << "4-digit values found in PostgreSQL's files: sent "
            << sent_in_data << "/" << kCards << ", control " << control_in_data
            << "/" << kCards << "; in its statement log: sent " << sent_in_logs
            << ", control " << control_in_logs << "\n";
  auto margin = [](int control) { return 5 + 5 * std::sqrt(control + 1.0); };
  EXPECT_LE(sent_in_data, control_in_data + margin(control_in_data));
  EXPECT_LE(sent_in_logs, control_in_logs + margin(control_in_logs));
  EXPECT_LT(sent_in_data, kCards);
  EXPECT_LT(sent_in_logs, kCards);
  const absl::flat_hash_set<std::string> pan_set(pans.begin(), pans.end());
  const std::vector<std::pair<std::string, std::string>> raw = {
      {pg.log_file(), raw_log}};
  for (const auto* files : {&data, &logs, &raw}) {
    for (const auto& [path, bytes] : *files) {
      EXPECT_THAT(testing::DigitStringsIn(bytes, pan_set), IsEmpty()) << path;
    }
  }
  ASSERT_THAT(pg.Start(), IsOk());
}

TEST_F(TokenLifecycleEndToEndTest, CliCoversFormatsCvvInfoAndDelete) {
  const std::string cli =
      absl::StrCat(CARDVAULT_CLI_PATH, " --pki_dir=", env_->dir(),
                   "/pki --address=", server_->address());
  const std::string out = env_->dir() + "/cli.out";
  testing::RunOrDie(absl::StrCat(
      "printf '4111111111111111\\n7391\\n' | ", cli,
      " tokenize --format=bin_last_four --ttl=1h --cvv_from_stdin >", out));
  const std::string token(
      absl::StripAsciiWhitespace(testing::ReadFileOrEmpty(out)));
  ASSERT_EQ(token.size(), 16u);
  EXPECT_EQ(token.substr(0, 6), "411111");
  EXPECT_EQ(token.substr(12), "1111");
  testing::RunOrDie(absl::StrCat(cli, " info ", token, " >", out));
  EXPECT_THAT(testing::ReadFileOrEmpty(out),
              HasSubstr("\"format\":\"BIN_LAST_FOUR\""));
  EXPECT_THAT(testing::ReadFileOrEmpty(out), HasSubstr("expire_time"));
  testing::RunOrDie(absl::StrCat(cli, " detokenize --purpose=authorization ",
                                 token, " >", out));
  EXPECT_THAT(testing::ReadFileOrEmpty(out), HasSubstr("cvv: 7391"));
  testing::RunOrDie(absl::StrCat(cli, " detokenize --purpose=authorization ",
                                 token, " >", out));
  EXPECT_THAT(testing::ReadFileOrEmpty(out), Not(HasSubstr("cvv")));
  testing::RunOrDie(absl::StrCat(cli, " delete ", token, " >", out));
  EXPECT_THAT(testing::ReadFileOrEmpty(out), HasSubstr("deleted"));
  EXPECT_NE(std::system(absl::StrCat(cli, " detokenize --purpose=refund ",
                                     token, " 2>", out, " >/dev/null")
                            .c_str()),
            0);
  EXPECT_THAT(testing::ReadFileOrEmpty(out), HasSubstr("NOT_FOUND"));
}

}  // namespace
}  // namespace cardvault
