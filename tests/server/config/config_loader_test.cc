#include "server/config/config_loader.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::config {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr char kGood[] = R"pb(
  listen_address: "127.0.0.1:9443"
  tls {
    server_cert_file: "/pki/server.crt"
    server_key_file: "/pki/server.key"
    client_ca_file: "/pki/ca.crt"
  }
  hsm {
    module_path: "/usr/lib/softhsm/libsofthsm2.so"
    token_label: "t"
    pin_env: "CARDVAULT_TEST_PIN"
  }
  storage { rocksdb { data_dir: "/data" } }
  policy { file: "/etc/cardvault/policy.textproto" }
)pb";

std::string With(absl::string_view from, absl::string_view to) {
  return absl::StrReplaceAll(kGood, {{from, to}});
}

TEST(ConfigLoaderTest, ParsesGoodConfigAndFillsDefaults) {
  auto config = ParseConfig(kGood, "good.textproto");
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(config->tls().refresh_interval_seconds(), 60u);
  EXPECT_EQ(config->hsm().kek_label(), "cardvault-kek");
  EXPECT_EQ(config->hsm().max_sessions(), 4u);
  EXPECT_FALSE(config->hsm().create_kek_if_missing());
  EXPECT_EQ(config->limits().max_request_bytes(), 524288u);
  EXPECT_EQ(config->tokens().cvv_ttl_seconds(), 900u);
  EXPECT_EQ(config->tokens().idempotency_window_seconds(), 86400u);
  EXPECT_EQ(config->tokens().max_batch_items(), 1000u);
  EXPECT_EQ(config->policy().reload_interval_seconds(), 2u);
  EXPECT_EQ(config->audit().retention_days(), 400u);
  EXPECT_TRUE(config->backup().directory().empty());
  EXPECT_EQ(config->backup().keep(), 7u);
  EXPECT_EQ(config->backup().interval_seconds(), 0u);
}

TEST(ConfigLoaderTest, ClusterDefaultsToTheClientCaAndOneSecond) {
  auto config = ParseConfig(
      With("rocksdb { data_dir: \"/data\" }",
           "postgres { conninfo_file: \"/c\" } } cluster { "
           "client_cert_file: \"/node.crt\" client_key_file: \"/node.key\""),
      "c");
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(config->cluster().server_ca_file(), "/pki/ca.crt");
  EXPECT_EQ(config->cluster().peer_deadline_ms(), 1000u);
  EXPECT_TRUE(config->cluster().advertise_address().empty());
}

TEST(ConfigLoaderTest, UnknownKeyNamesFileLineAndKey) {
  auto config = ParseConfig(With("storage {", "stroage {"), "c.textproto");
  EXPECT_THAT(config, StatusIs(absl::StatusCode::kInvalidArgument,
                               AllOf(HasSubstr("c.textproto:13:"),
                                     HasSubstr("stroage"))));
}

TEST(ConfigLoaderTest, RejectsBadValues) {
  const std::pair<std::string, std::string> cases[] = {
      {With("127.0.0.1:9443", "127.0.0.1"), "listen_address"},
      {With("127.0.0.1:9443", "127.0.0.1:70000"), "listen_address"},
      {With("file: \"/etc/cardvault/policy.textproto\"", ""), "policy.file"},
      {With("client_ca_file: \"/pki/ca.crt\"", ""), "client_ca_file"},
      {With("pin_env: \"CARDVAULT_TEST_PIN\"", ""), "pin_file or hsm.pin_env"},
      {With("data_dir: \"/data\"", ""), "data_dir"},
      {With("token_label: \"t\"", ""), "token_label"},
      {absl::StrCat(kGood, "limits { max_request_bytes: 10 }"),
       "max_request_bytes"},
      {absl::StrCat(kGood, "audit { retention_days: 90 }"), "retention_days"},
      {absl::StrCat(kGood, "keys { required_approvals: 1 }"),
       "keys.required_approvals"},
      {absl::StrCat(kGood, "keys { required_approvals: 17 }"),
       "keys.required_approvals must be at most 16"},
      {absl::StrCat(kGood, "node_name: \"node a\""), "node_name"},
      {absl::StrCat(kGood, "node_name: \"n4111111111111111\""),
       "node_name must not hold"},
      {absl::StrCat(kGood, "node_name: \"", std::string(65, 'n'), "\""),
       "node_name"},
      {absl::StrCat(kGood, "backup { directory: \"/b\" interval_seconds: 30 }"),
       "backup.interval_seconds"},
      {absl::StrCat(kGood, "backup { directory: \"/data\" }"),
       "must be outside storage.rocksdb.data_dir"},
      {absl::StrCat(kGood, "backup { directory: \"/data/backups\" }"),
       "backup.directory /data/backups must be outside"},
      {absl::StrCat(kGood,
                    "backup { directory: \"/b\" staging_directory: \"/\" }"),
       "backup.staging_directory"},
      {absl::StrCat(kGood,
                    "backup { directory: \"/b\" staging_directory: "
                    "\"/b/stage\" }"),
       "backup.staging_directory"},
      {With("rocksdb { data_dir: \"/data\" }",
            "postgres { conninfo_file: \"/c\" pool_size: 257 }"),
       "storage.postgres.pool_size must be at most 256"},
      {With("rocksdb { data_dir: \"/data\" }",
            "postgres { conninfo_file: \"/c\" resolve_timeout_ms: 60001 }"),
       "storage.postgres.resolve_timeout_ms must be at most 60000"},
      {absl::StrCat(kGood,
                    "cluster { client_cert_file: \"/c\" "
                    "client_key_file: \"/k\" }"),
       "cluster is for storage.postgres"},
      {With("rocksdb { data_dir: \"/data\" }",
            "postgres { conninfo_file: \"/c\" } } cluster { "
            "client_key_file: \"/k\""),
       "cluster.client_cert_file is required"},
      {With("rocksdb { data_dir: \"/data\" }",
            "postgres { conninfo_file: \"/c\" } } cluster { "
            "client_cert_file: \"/c\""),
       "cluster.client_key_file is required"},
      {With("rocksdb { data_dir: \"/data\" }",
            "postgres { conninfo_file: \"/c\" } } cluster { "
            "client_cert_file: \"/c\" client_key_file: \"/k\" "
            "advertise_address: \"node-a\""),
       "cluster.advertise_address"},
      {With("rocksdb { data_dir: \"/data\" }",
            "postgres { conninfo_file: \"/c\" } } cluster { "
            "client_cert_file: \"/c\" client_key_file: \"/k\" "
            "peer_deadline_ms: 10001"),
       "cluster.peer_deadline_ms"},
  };
  for (const auto& [text, field] : cases) {
    EXPECT_THAT(ParseConfig(text, "c"),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(field)))
        << field;
  }
}

TEST(ConfigLoaderTest, MissingFileIsNotFound) {
  EXPECT_THAT(LoadConfigFile("/nonexistent/cardvaultd.textproto"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST(ConfigLoaderTest, ReadsPinFromEnvironmentOrFile) {
  v1::HsmConfig hsm;
  hsm.set_pin_env("CARDVAULT_TEST_PIN");
  unsetenv("CARDVAULT_TEST_PIN");
  EXPECT_THAT(ReadHsmPin(hsm), StatusIs(absl::StatusCode::kNotFound));
  setenv("CARDVAULT_TEST_PIN", "1234", 1);
  auto pin = ReadHsmPin(hsm);
  ASSERT_THAT(pin, IsOk());
  EXPECT_EQ(pin->view(), "1234");

  const std::string path = std::filesystem::temp_directory_path() /
                           ("cardvault-pin-" + std::to_string(getpid()));
  std::ofstream(path) << "5678\n";
  hsm.set_pin_file(path);
  pin = ReadHsmPin(hsm);
  std::filesystem::remove(path);
  ASSERT_THAT(pin, IsOk());
  EXPECT_EQ(pin->view(), "5678");
}

// Hostile (review of "CVVs across nodes"): an advertised address other
// nodes cannot reach this node at, nor one that picks a gRPC resolver.
TEST(ConfigLoaderTest, HostileClusterAdvertiseAddressMustBeReachable) {
  for (const char* address :
       {"0.0.0.0:9443", "[::]:9443", "*:9443", ":9443",
        "unix:/run/cardvault.sock:1", "dns://10.0.0.53/node-a:9443"}) {
    EXPECT_THAT(
        ParseConfig(With("rocksdb { data_dir: \"/data\" }",
                         absl::StrCat("postgres { conninfo_file: \"/c\" } } "
                                      "cluster { client_cert_file: \"/c\" "
                                      "client_key_file: \"/k\" "
                                      "advertise_address: \"",
                                      address, "\"")),
                    "c"),
        StatusIs(absl::StatusCode::kInvalidArgument,
                 HasSubstr("cluster.advertise_address")))
        << address;
  }
}

}  // namespace
}  // namespace cardvault::config
