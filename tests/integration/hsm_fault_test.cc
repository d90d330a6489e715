// HSM faults: a missing module or token stops start-up with a clear message;
// a device failing while cardvaultd serves turns health NOT_SERVING, makes
// the calls that need the HSM fail with UNAVAILABLE (never wrong data), and
// service recovers without a restart once the device answers. Faults come
// from tests/hsm/fault_pkcs11.cc, which forwards to SoftHSM2.
#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "client/health_check.h"
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
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kSoftHsm[] = "/usr/lib/softhsm/libsofthsm2.so";

class HsmFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_ = testing::TestEnv::Create();
    log_ = env_->dir() + "/server.log";
    fault_ = env_->dir() + "/hsm-fault";
    setenv("CARDVAULT_FAULT_PKCS11_CONTROL", fault_.c_str(), 1);
    env_->AddToConfig("hsm", "health_check_interval_seconds: 1");
  }
  void TearDown() override { unsetenv("CARDVAULT_FAULT_PKCS11_CONTROL"); }
  // Replaces `from` with `to` in the server's configuration.
  void EditConfig(absl::string_view from, absl::string_view to) {
    const std::string config = testing::ReadFileOrEmpty(env_->config_path());
    ASSERT_THAT(config, HasSubstr(from));
    std::ofstream(env_->config_path(), std::ios::trunc)
        << absl::StrReplaceAll(config, {{from, to}});
  }
  void InjectFault(bool on) {
    if (on) {
      std::ofstream(fault_) << 48;  // CKR_DEVICE_ERROR
    } else {
      std::remove(fault_.c_str());
    }
  }
  client::ServingStatus Health(const testing::ServerProcess& server) {
    auto channel = *client::CreateMutualTlsChannel(
        testing::ClientOptionsFor(*env_, server.address(), "auditor"));
    auto status = client::CheckHealth(channel, "cardvault.v1.TokenVault",
                                      absl::Seconds(5));
    return status.ok() ? *status : client::ServingStatus::kUnknown;
  }
  bool WaitForHealth(const testing::ServerProcess& server,
                     client::ServingStatus want) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline) {
      if (Health(server) == want) return true;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  }

  std::unique_ptr<testing::TestEnv> env_;
  std::string log_;
  std::string fault_;
};

TEST_F(HsmFaultTest, MissingModuleOrTokenStopsStartUpClearly) {
  EditConfig(kSoftHsm, "/nonexistent/libpkcs11.so");
  auto missing_module =
      testing::ServerProcess::Start(env_->config_path(), log_);
  EXPECT_THAT(missing_module.status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("exit status 1"), HasSubstr("HSM"),
                             HasSubstr("/nonexistent/libpkcs11.so"))));
  EditConfig("/nonexistent/libpkcs11.so", kSoftHsm);
  EditConfig("token_label: \"cardvault-test\"",
             "token_label: \"no-such-token\"");
  auto missing_token = testing::ServerProcess::Start(env_->config_path(), log_);
  EXPECT_THAT(
      missing_token.status(),
      StatusIs(absl::StatusCode::kFailedPrecondition,
               AllOf(HasSubstr("exit status 1"), HasSubstr("no-such-token"))));
}

TEST_F(HsmFaultTest, DeviceFailingAtStartUpStopsStartUp) {
  EditConfig(kSoftHsm, CARDVAULT_FAULT_PKCS11_PATH);
  InjectFault(true);
  auto server = testing::ServerProcess::Start(env_->config_path(), log_);
  EXPECT_THAT(server.status(), StatusIs(absl::StatusCode::kFailedPrecondition,
                                        AllOf(HasSubstr("exit status 1"),
                                              HasSubstr("CKR_DEVICE_ERROR"))));
}

TEST_F(HsmFaultTest, DeviceFailureDuringServiceIsReportedAndRecovered) {
  EditConfig(kSoftHsm, CARDVAULT_FAULT_PKCS11_PATH);
  auto started = testing::ServerProcess::Start(env_->config_path(), log_);
  ASSERT_THAT(started, IsOk());
  const testing::ServerProcess& server = **started;
  auto pos = testing::ClientFor(*env_, server.address(), "pos");
  auto processor = testing::ClientFor(*env_, server.address(), "processor");
  auto admin = testing::ClientFor(*env_, server.address(), "admin");
  v1::Card card;
  card.set_pan("4111111111111111");
  auto before = pos->Tokenize(card);
  ASSERT_THAT(before, IsOk());
  EXPECT_EQ(Health(server), client::ServingStatus::kServing);

  InjectFault(true);
  ASSERT_TRUE(WaitForHealth(server, client::ServingStatus::kNotServing));
  // What needs the HSM fails cleanly; nothing returns wrong data.
  EXPECT_THAT(admin->RotateDataKey(), StatusIs(absl::StatusCode::kUnavailable));
  auto during = processor->Detokenize(*before, "authorization");
  if (during.ok()) {
    EXPECT_EQ(during->pan(), "4111111111111111");  // keys are in memory
  } else {
    EXPECT_THAT(during, StatusIs(absl::StatusCode::kUnavailable));
  }
  EXPECT_THAT(testing::ReadFileOrEmpty(log_),
              HasSubstr("ALERT HSM unavailable"));

  InjectFault(false);
  ASSERT_TRUE(WaitForHealth(server, client::ServingStatus::kServing));
  auto rotated = admin->RotateDataKey();
  ASSERT_THAT(rotated, IsOk());
  EXPECT_EQ(rotated->key_id(), "dek/00000002");
  auto after = pos->Tokenize(card);
  ASSERT_THAT(after, IsOk());
  for (const std::string& token : {*before, *after}) {
    auto back = processor->Detokenize(token, "authorization");
    ASSERT_THAT(back, IsOk());
    EXPECT_EQ(back->pan(), "4111111111111111");
  }
  EXPECT_THAT(testing::ReadFileOrEmpty(log_), HasSubstr("HSM reachable again"));
}

}  // namespace
}  // namespace cardvault
