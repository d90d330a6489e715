#include "server/config/policy_loader.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/config/config_loader.h"
#include "server/crypto/sha256.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::config {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr char kPolicy[] = R"pb(
  purposes: [ "authorization" ]
  bindings {
    identity: "spiffe://t/pos"
    roles: TOKENIZER
    tokenize_domains: "m1/pos"
  }
  bindings {
    identity: "spiffe://t/processor"
    roles: DETOKENIZER
    detokenize_domains: "m1/pos"
    detokenize_limit { per_second: 5 per_day: 100 }
  }
)pb";

auth::Caller Uri(absl::string_view identity) {
  auth::Caller c;
  c.identity = std::string(identity);
  return c;
}

TEST(PolicyLoaderTest, ParsesAGoodPolicy) {
  auto policy = ParsePolicy(kPolicy, "p");
  ASSERT_THAT(policy, IsOk());
  EXPECT_THAT(
      (*policy)->Check(Uri("spiffe://t/pos"), auth::Permission::kTokenize),
      IsOk());
  EXPECT_EQ((*policy)->DetokenizeLimit(Uri("spiffe://t/processor")).per_day,
            100u);
}

TEST(PolicyLoaderTest, ParsesDomainSettingsWithDefaults) {
  auto policy = ParsePolicy(absl::StrCat(kPolicy, R"pb(
                              domains {
                                name: "m1/pos"
                                deterministic: true
                                max_ttl_seconds: 3600
                                bin_digits: 8
                              }
                            )pb"),
                            "p");
  ASSERT_THAT(policy, IsOk());
  const auth::DomainSettings& m1 = (*policy)->SettingsOf("m1/pos");
  EXPECT_TRUE(m1.deterministic);
  EXPECT_EQ(m1.max_ttl, absl::Hours(1));
  EXPECT_EQ(m1.bin_digits, 8u);
  const auth::DomainSettings& other = (*policy)->SettingsOf("m2/pos");
  EXPECT_FALSE(other.deterministic);
  EXPECT_EQ(other.max_ttl, absl::ZeroDuration());
  EXPECT_EQ(other.bin_digits, 6u);
  EXPECT_THAT(
      ParsePolicy(
          absl::StrCat(kPolicy, "domains { name: \"m1/pos\" bin_digits: 7 }"),
          "p"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bin_digits")));
  EXPECT_THAT(ParsePolicy(absl::StrCat(kPolicy,
                                       "domains { name: \"m1/pos\" } "
                                       "domains { name: \"m1/pos\" }"),
                          "p"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("twice")));
}

TEST(PolicyLoaderTest, RejectsSyntaxErrorsUnknownKeysAndBadBindings) {
  EXPECT_THAT(
      ParsePolicy("bindings {", "p.textproto"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("p.textproto:")));
  EXPECT_THAT(
      ParsePolicy(absl::StrCat(kPolicy, "superuser: true"), "p"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("superuser")));
  EXPECT_THAT(
      ParsePolicy(absl::StrCat(kPolicy,
                               "bindings { identity: \"spiffe://t/pos\" roles: "
                               "AUDITOR }"),
                  "p"),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("spiffe://t/pos"), HasSubstr("twice"))));
  EXPECT_THAT(ParsePolicy("bindings { identity: \"x\" roles: TOKENIZER }", "p"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

class PolicyFileWatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = (std::filesystem::temp_directory_path() /
             absl::StrCat("cardvault-policy-", getpid(), ".textproto"))
                .string();
    Write(kPolicy);
    holder_ = std::make_unique<auth::PolicyHolder>(*LoadPolicyFile(path_));
  }
  void TearDown() override { std::filesystem::remove(path_); }
  void Write(absl::string_view text) {
    std::ofstream(path_ + ".tmp", std::ios::trunc) << text;
    std::filesystem::rename(path_ + ".tmp", path_);
  }
  bool PosMayTokenize() {
    return holder_->Current()
        ->Check(Uri("spiffe://t/pos"), auth::Permission::kTokenize)
        .ok();
  }

  std::string path_;
  std::unique_ptr<auth::PolicyHolder> holder_;
};

TEST_F(PolicyFileWatcherTest, ChangeAppliesAndBadFileKeepsTheOldPolicy) {
  std::vector<absl::Status> reloads;
  PolicyFileWatcher watcher(
      path_, kPolicy, absl::Hours(1), holder_.get(),
      [&](const PolicyReload& r) { reloads.push_back(r.outcome); });
  watcher.CheckNow();
  EXPECT_TRUE(reloads.empty());  // unchanged file: nothing happens
  ASSERT_TRUE(PosMayTokenize());

  Write("purposes: \"refund\"");  // valid: nobody bound any more
  watcher.CheckNow();
  ASSERT_EQ(reloads.size(), 1u);
  EXPECT_THAT(reloads[0], IsOk());
  EXPECT_FALSE(PosMayTokenize());

  Write(kPolicy);
  watcher.CheckNow();
  EXPECT_TRUE(PosMayTokenize());

  Write("bindings { identity: ");  // malformed
  watcher.CheckNow();
  ASSERT_EQ(reloads.size(), 3u);
  EXPECT_THAT(reloads[2], StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(PosMayTokenize());  // the old policy still serves
}

TEST_F(PolicyFileWatcherTest, BackgroundThreadPicksUpChanges) {
  absl::Mutex mu;
  int reloads = 0;
  PolicyFileWatcher watcher(path_, kPolicy, absl::Milliseconds(20),
                            holder_.get(), [&](const PolicyReload&) {
                              absl::MutexLock lock(&mu);
                              ++reloads;
                            });
  Write("purposes: \"refund\"");
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(mu.AwaitWithTimeout(absl::Condition(
                                      +[](int* n) { return *n > 0; }, &reloads),
                                  absl::Seconds(10)));
  EXPECT_FALSE(PosMayTokenize());
}

TEST_F(PolicyFileWatcherTest, ReloadRecordsTheFilesHashAndWhatChanged) {
  std::vector<PolicyReload> reloads;
  PolicyFileWatcher watcher(
      path_, kPolicy, absl::Hours(1), holder_.get(),
      [&](const PolicyReload& r) { reloads.push_back(r); });
  // Grant, then revert: both leave evidence.
  const std::string granted = absl::StrCat(
      kPolicy,
      "bindings { identity: \"spiffe://t/insider\" roles: DETOKENIZER "
      "detokenize_domains: \"m1/pos\" }\n");
  Write(granted);
  watcher.CheckNow();
  Write(kPolicy);
  watcher.CheckNow();
  ASSERT_EQ(reloads.size(), 2u);
  EXPECT_THAT(reloads[0].outcome, IsOk());
  EXPECT_EQ(reloads[0].sha256_hex, crypto::Sha256Hex(granted));
  EXPECT_EQ(reloads[0].changes, "bindings added: spiffe://t/insider");
  EXPECT_EQ(reloads[1].sha256_hex, crypto::Sha256Hex(kPolicy));
  EXPECT_EQ(reloads[1].changes, "bindings removed: spiffe://t/insider");
}

TEST_F(PolicyFileWatcherTest, AFileOthersMayWriteIsRefused) {
  std::vector<PolicyReload> reloads;
  PolicyFileWatcher watcher(
      path_, kPolicy, absl::Hours(1), holder_.get(),
      [&](const PolicyReload& r) { reloads.push_back(r); });
  Write("purposes: \"refund\"");
  ASSERT_EQ(chmod(path_.c_str(), 0666), 0);
  watcher.CheckNow();
  ASSERT_EQ(reloads.size(), 1u);
  EXPECT_THAT(
      reloads[0].outcome,
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("mode 0666")));
  EXPECT_TRUE(PosMayTokenize());  // the old policy still serves
}

TEST(CheckFileIsPrivateTest, NamesTheFileAndItsMode) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            absl::StrCat("cardvault-private-", getpid()))
                               .string();
  std::ofstream(path) << "x";
  ASSERT_EQ(chmod(path.c_str(), 0644), 0);
  EXPECT_THAT(CheckFileIsPrivate(path, "policy file", false), IsOk());
  EXPECT_THAT(CheckFileIsPrivate(path, "HSM PIN file", true),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("HSM PIN file")));
  ASSERT_EQ(chmod(path.c_str(), 0620), 0);
  EXPECT_THAT(
      CheckFileIsPrivate(path, "config file", false),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("mode 0620")));
  ASSERT_EQ(chmod(path.c_str(), 0600), 0);
  EXPECT_THAT(CheckFileIsPrivate(path, "HSM PIN file", true), IsOk());
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace cardvault::config
