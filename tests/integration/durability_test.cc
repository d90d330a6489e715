// Invariant 4: a token acknowledged to a client survives kill -9 of the
// server. Clients tokenize under concurrent load; the server is SIGKILLed in
// the middle; after a restart every acknowledged token must detokenize to
// its card.
#include <atomic>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
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

constexpr int kClientThreads = 8;
constexpr int kRounds = 3;

client::ClientOptions Options(const testing::TestEnv& env,
                              const testing::ServerProcess& server,
                              absl::string_view name) {
  return testing::ClientOptionsFor(env, server.address(), name);
}

TEST(DurabilityTest, AcknowledgedTokensSurviveKill9UnderLoad) {
  auto env = testing::TestEnv::Create();
  const std::string log = env->dir() + "/server.log";
  absl::Mutex mu;
  std::vector<std::pair<std::string, std::string>> acked;  // token, pan
  std::mt19937_64 rng(2026);
  int port = testing::PickUnusedPort();

  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    auto server = testing::ServerProcess::Start(env->config_path(), log, port);
    ASSERT_THAT(server, IsOk());
    // Everything acknowledged in earlier rounds is still there.
    {
      auto processor =
          *client::VaultClient::Create(Options(*env, **server, "processor"));
      absl::MutexLock lock(&mu);
      for (const auto& [token, pan] : acked) {
        auto card = processor->Detokenize(token, "authorization");
        ASSERT_THAT(card, IsOk()) << token;
        ASSERT_EQ(card->pan(), pan) << token;
      }
    }
    const size_t acked_before = acked.size();
    const int kill_after = 200 + static_cast<int>(rng() % 300);
    std::atomic<int> acked_this_round{0};
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < kClientThreads; ++t) {
      const uint64_t seed = rng();
      threads.emplace_back([&, seed] {
        std::mt19937_64 local(seed);
        auto pos = *client::VaultClient::Create(Options(*env, **server, "pos"));
        const auto& brands = testing::Brands();
        while (!stop.load()) {
          const auto& brand = brands[local() % brands.size()];
          const std::string pan = testing::MakePan(
              brand.prefixes[local() % brand.prefixes.size()],
              brand.lengths[local() % brand.lengths.size()], local);
          v1::Card card;
          card.set_pan(pan);
          auto token = pos->Tokenize(card);
          if (!token.ok()) break;  // the server is gone
          absl::MutexLock lock(&mu);
          acked.emplace_back(*token, pan);
          ++acked_this_round;
        }
      });
    }
    while (acked_this_round.load() < kill_after) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    (*server)->Kill9();  // requests are in flight on 8 threads right now
    stop = true;
    for (auto& t : threads) t.join();
    EXPECT_GE(acked.size() - acked_before, static_cast<size_t>(kill_after));
  }

  auto server = testing::ServerProcess::Start(env->config_path(), log, port);
  ASSERT_THAT(server, IsOk());
  auto processor =
      *client::VaultClient::Create(Options(*env, **server, "processor"));
  int verified = 0;
  for (const auto& [token, pan] : acked) {
    auto card = processor->Detokenize(token, "authorization");
    ASSERT_THAT(card, IsOk()) << token;
    ASSERT_EQ(card->pan(), pan) << token;
    ++verified;
  }
  std::cout << "verified " << verified << " acknowledged tokens after "
            << kRounds << " kill -9 rounds\n";
  EXPECT_GE(verified, kRounds * 200);
}

}  // namespace
}  // namespace cardvault
