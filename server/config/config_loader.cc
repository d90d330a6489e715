#include "server/config/config_loader.h"

#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "server/config/text_proto.h"
#include "server/util/node_address.h"
#include "server/util/safe_text.h"

namespace cardvault::config {
namespace {

using ::cardvault::config::v1::LimitsConfig;

constexpr uint32_t kDefaultRefreshSeconds = 60;
constexpr uint32_t kDefaultMaxSessions = 4;
constexpr uint32_t kDefaultMaxRequestBytes = 512 * 1024;
constexpr uint32_t kDefaultServerThreads = 16;
constexpr uint32_t kDefaultPolicyReloadSeconds = 2;
constexpr uint32_t kDefaultMetricsSeconds = 10;
constexpr uint32_t kDefaultAuditRetentionDays = 400;
constexpr uint32_t kDefaultCvvTtlSeconds = 15 * 60;
constexpr uint32_t kDefaultMaxCvvEntries = 100000;
constexpr uint32_t kDefaultIdempotencyWindowSeconds = 24 * 3600;
constexpr uint32_t kDefaultMaxBatchItems = 1000;
constexpr uint64_t kMaxEncryptionsPerKey = uint64_t{1} << 32;
constexpr uint32_t kDefaultCryptoperiodDays = 365;
constexpr uint32_t kDefaultReencryptSeconds = 3600;
constexpr uint32_t kDefaultReencryptChunk = 512;
constexpr size_t kMaxPinBytes = 256;

absl::Status Require(bool ok, absl::string_view source,
                     absl::string_view message) {
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", message));
}

bool IsHostPort(absl::string_view address) {
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) return false;
  uint32_t port = 0;
  return absl::SimpleAtoi(address.substr(colon + 1), &port) && port > 0 &&
         port < 65536;
}

absl::Status Validate(ServerConfig& c, absl::string_view src) {
  if (!c.storage().rocksdb().data_dir().empty()) {
    c.mutable_storage()->mutable_rocksdb()->set_data_dir(
        NormalizeDirectory(c.storage().rocksdb().data_dir()));
  }
  if (!c.backup().directory().empty()) {
    c.mutable_backup()->set_directory(
        NormalizeDirectory(c.backup().directory()));
  }
  if (!c.backup().staging_directory().empty()) {
    c.mutable_backup()->set_staging_directory(
        NormalizeDirectory(c.backup().staging_directory()));
  }
  absl::Status s;
  auto check = [&](bool ok, absl::string_view message) {
    if (s.ok()) s = Require(ok, src, message);
  };
  check(IsHostPort(c.listen_address()),
        "listen_address must be host:port with a port of 1-65535");
  check(c.has_tls(), "tls is required");
  check(!c.tls().server_cert_file().empty(),
        "tls.server_cert_file is required");
  check(!c.tls().server_key_file().empty(), "tls.server_key_file is required");
  check(!c.tls().client_ca_file().empty(), "tls.client_ca_file is required");
  check(c.has_hsm(), "hsm is required");
  check(!c.hsm().module_path().empty(), "hsm.module_path is required");
  check(!c.hsm().token_label().empty(), "hsm.token_label is required");
  check(c.hsm().pin_source_case() !=
            ::cardvault::config::v1::HsmConfig::PIN_SOURCE_NOT_SET,
        "hsm.pin_file or hsm.pin_env is required");
  check(c.hsm().kek_label().size() <= 55,
        "hsm.kek_label is over 55 bytes (rotated KEKs add 9)");
  check(c.hsm().max_sessions() <= 64, "hsm.max_sessions must be at most 64");
  check(c.node_name().size() <= 64 &&
            std::all_of(c.node_name().begin(), c.node_name().end(),
                        [](char ch) { return ch > 0x20 && ch < 0x7f; }),
        "node_name must be at most 64 printable ASCII characters");
  check(util::SafeText(c.node_name(), 64, util::CardNumbers::kGroupedToo) ==
            c.node_name(),
        "node_name must not hold a digit run that could be a card number");
  check(c.storage().has_rocksdb() || c.storage().has_postgres(),
        "storage.rocksdb or storage.postgres is required");
  check(!c.storage().has_rocksdb() || !c.storage().rocksdb().data_dir().empty(),
        "storage.rocksdb.data_dir is required");
  check(!c.storage().has_postgres() ||
            !c.storage().postgres().conninfo_file().empty(),
        "storage.postgres.conninfo_file is required");
  check(c.storage().postgres().pool_size() <= 256,
        "storage.postgres.pool_size must be at most 256");
  check(c.storage().postgres().resolve_timeout_ms() <= 60000,
        "storage.postgres.resolve_timeout_ms must be at most 60000");
  if (c.has_cluster()) {
    const auto& cluster = c.cluster();
    check(c.storage().has_postgres(),
          "cluster is for storage.postgres (nodes sharing one database)");
    check(cluster.advertise_address().empty() ||
              util::IsNodeAddress(cluster.advertise_address()),
          "cluster.advertise_address must be host:port (a DNS name or IP "
          "address other nodes reach, no wildcard, no scheme) with a port of "
          "1-65535");
    check(!cluster.client_cert_file().empty(),
          "cluster.client_cert_file is required");
    check(!cluster.client_key_file().empty(),
          "cluster.client_key_file is required");
    check(cluster.peer_deadline_ms() <= 10000,
          "cluster.peer_deadline_ms must be at most 10000");
  }
  // Backups of the PostgreSQL store are the database's own (pgBackRest).
  check(!c.storage().has_postgres() || c.backup().directory().empty(),
        "backup is for storage.rocksdb; back up PostgreSQL with its own tools");
  check(c.limits().max_request_bytes() == 0 ||
            (c.limits().max_request_bytes() >= 1024 &&
             c.limits().max_request_bytes() <= (4u << 20)),
        "limits.max_request_bytes must be 1024 to 4194304");
  check(c.audit().retention_days() == 0 || c.audit().retention_days() >= 365,
        "audit.retention_days must be at least 365 (PCI DSS 10.5.1)");
  check(c.keys().max_encryptions_per_key() <= kMaxEncryptionsPerKey,
        "keys.max_encryptions_per_key must be at most 2^32");
  check(c.keys().reencrypt_chunk_records() <= 10000,
        "keys.reencrypt_chunk_records must be at most 10000");
  check(c.keys().required_approvals() != 1,
        "keys.required_approvals must be at least 2 (dual control)");
  check(c.keys().required_approvals() <= 16,
        "keys.required_approvals must be at most 16");
  check(c.tokens().cvv_ttl_seconds() <= 3600,
        "tokens.cvv_ttl_seconds must be at most 3600");
  check(c.tokens().max_batch_items() <= 10000,
        "tokens.max_batch_items must be at most 10000");
  check(c.limits().max_server_threads() <= 1024,
        "limits.max_server_threads must be at most 1024");
  check(c.limits().vault_threads() <= 1024,
        "limits.vault_threads must be at most 1024");
  check(c.limits().max_connection_age_seconds() == 0 ||
            (c.limits().max_connection_age_seconds() >= 2 &&
             c.limits().max_connection_age_seconds() <= 86400),
        "limits.max_connection_age_seconds must be 2 to 86400");
  check(c.limits().max_concurrent_streams() <= 10000,
        "limits.max_concurrent_streams must be at most 10000");
  const auto& listener = c.listener();
  check(listener.handshake_timeout_seconds() <= 60,
        "listener.handshake_timeout_seconds must be 1 to 60");
  check(
      listener.memory_limit_mb() == 0 || (listener.memory_limit_mb() >= 64 &&
                                          listener.memory_limit_mb() <= 65536),
      "listener.memory_limit_mb must be 64 to 65536");
  check(listener.watchdog().client_cert_file().empty() ==
            listener.watchdog().client_key_file().empty(),
        "listener.watchdog needs both client_cert_file and client_key_file");
  check(listener.watchdog().interval_seconds() <= 300,
        "listener.watchdog.interval_seconds must be 1 to 300");
  check(listener.watchdog().exit_after_seconds() == 0 ||
            listener.watchdog().exit_after_seconds() >=
                2 * std::max(1u, listener.watchdog().interval_seconds()),
        "listener.watchdog.exit_after_seconds must be at least twice its "
        "interval_seconds");
  check(
      c.backup().interval_seconds() == 0 || c.backup().interval_seconds() >= 60,
      "backup.interval_seconds must be 0 or at least 60");
  if (absl::Status b = CheckBackupDirectory(c); !b.ok()) {
    check(false, b.message());
  }
  check(!c.policy().file().empty(), "policy.file is required");
  check(c.policy().reload_interval_seconds() <= 3600,
        "policy.reload_interval_seconds must be at most 3600");
  if (!s.ok()) return s;

  // Documented defaults.
  auto* tls = c.mutable_tls();
  if (tls->refresh_interval_seconds() == 0) {
    tls->set_refresh_interval_seconds(kDefaultRefreshSeconds);
  }
  auto* hsm = c.mutable_hsm();
  if (hsm->kek_label().empty()) hsm->set_kek_label("cardvault-kek");
  if (hsm->max_sessions() == 0) hsm->set_max_sessions(kDefaultMaxSessions);
  if (hsm->health_check_interval_seconds() == 0) {
    hsm->set_health_check_interval_seconds(5);
  }
  if (c.policy().reload_interval_seconds() == 0) {
    c.mutable_policy()->set_reload_interval_seconds(
        kDefaultPolicyReloadSeconds);
  }
  if (c.audit().retention_days() == 0) {
    c.mutable_audit()->set_retention_days(kDefaultAuditRetentionDays);
  }
  if (c.metrics().interval_seconds() == 0) {
    c.mutable_metrics()->set_interval_seconds(kDefaultMetricsSeconds);
  }
  auto* keys = c.mutable_keys();
  if (keys->max_encryptions_per_key() == 0) {
    keys->set_max_encryptions_per_key(kMaxEncryptionsPerKey);
  }
  if (keys->cryptoperiod_days() == 0) {
    keys->set_cryptoperiod_days(kDefaultCryptoperiodDays);
  }
  if (keys->reencrypt_interval_seconds() == 0) {
    keys->set_reencrypt_interval_seconds(kDefaultReencryptSeconds);
  }
  if (keys->reencrypt_chunk_records() == 0) {
    keys->set_reencrypt_chunk_records(kDefaultReencryptChunk);
  }
  if (keys->required_approvals() == 0) keys->set_required_approvals(2);
  config::v1::BackupConfig* backup = c.mutable_backup();
  if (backup->keep() == 0) backup->set_keep(7);
  if (backup->verify_sample_records() == 0) {
    backup->set_verify_sample_records(1000);
  }

  if (keys->proposal_ttl_hours() == 0) keys->set_proposal_ttl_hours(24);
  auto* tokens = c.mutable_tokens();
  if (tokens->cvv_ttl_seconds() == 0) {
    tokens->set_cvv_ttl_seconds(kDefaultCvvTtlSeconds);
  }
  if (tokens->max_cvv_entries() == 0) {
    tokens->set_max_cvv_entries(kDefaultMaxCvvEntries);
  }
  if (tokens->idempotency_window_seconds() == 0) {
    tokens->set_idempotency_window_seconds(kDefaultIdempotencyWindowSeconds);
  }
  if (tokens->max_batch_items() == 0) {
    tokens->set_max_batch_items(kDefaultMaxBatchItems);
  }
  if (c.has_cluster()) {
    auto* cluster = c.mutable_cluster();
    if (cluster->server_ca_file().empty()) {
      cluster->set_server_ca_file(c.tls().client_ca_file());
    }
    if (cluster->peer_deadline_ms() == 0) cluster->set_peer_deadline_ms(1000);
  }
  auto* limits = c.mutable_limits();
  if (limits->max_request_bytes() == 0) {
    limits->set_max_request_bytes(kDefaultMaxRequestBytes);
  }
  if (limits->vault_threads() == 0) limits->set_vault_threads(64);
  if (limits->max_queued_calls() == 0) limits->set_max_queued_calls(4096);
  if (limits->max_server_threads() == 0) {
    limits->set_max_server_threads(kDefaultServerThreads);
  }
  for (const auto& [value, set, fallback] :
       {std::tuple{limits->max_connection_age_seconds(),
                   &LimitsConfig::set_max_connection_age_seconds, 600u},
        std::tuple{limits->max_connection_age_grace_seconds(),
                   &LimitsConfig::set_max_connection_age_grace_seconds, 30u},
        std::tuple{limits->max_connection_idle_seconds(),
                   &LimitsConfig::set_max_connection_idle_seconds, 300u},
        std::tuple{limits->max_concurrent_streams(),
                   &LimitsConfig::set_max_concurrent_streams, 100u},
        std::tuple{limits->max_calls_per_identity(),
                   &LimitsConfig::set_max_calls_per_identity, 1024u},
        std::tuple{limits->min_client_ping_interval_seconds(),
                   &LimitsConfig::set_min_client_ping_interval_seconds, 30u},
        std::tuple{limits->refusals_recorded_per_minute(),
                   &LimitsConfig::set_refusals_recorded_per_minute, 60u}}) {
    if (value == 0) (limits->*set)(fallback);
  }
  if (tls->crl_expiry_warning_days() == 0) tls->set_crl_expiry_warning_days(7);
  auto* listen = c.mutable_listener();
  if (listen->handshake_timeout_seconds() == 0) {
    listen->set_handshake_timeout_seconds(5);
  }
  if (listen->memory_limit_mb() == 0) listen->set_memory_limit_mb(1024);
  if (listen->max_new_connections_per_second_per_source() == 0) {
    listen->set_max_new_connections_per_second_per_source(200);
  }
  auto* watchdog = listen->mutable_watchdog();
  if (watchdog->server_ca_file().empty()) {
    watchdog->set_server_ca_file(tls->client_ca_file());
  }
  if (watchdog->server_name().empty()) watchdog->set_server_name("localhost");
  if (watchdog->interval_seconds() == 0) watchdog->set_interval_seconds(5);
  if (watchdog->exit_after_seconds() == 0) {
    watchdog->set_exit_after_seconds(
        std::max(60u, 2 * watchdog->interval_seconds()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckBackupDirectory(const ServerConfig& c) {
  const std::string& backups = c.backup().directory();
  const std::string& data = c.storage().rocksdb().data_dir();
  if (backups.empty()) return absl::OkStatus();
  auto inside = [](const std::string& child, const std::string& parent) {
    return parent == "/" || absl::StartsWith(child, parent + "/");
  };
  auto overlap = [&](const std::string& a, const std::string& b) {
    return a == b || inside(a, b) || inside(b, a);
  };
  if (overlap(backups, data)) {
    return absl::InvalidArgumentError(
        absl::StrCat("backup.directory ", backups,
                     " must be outside storage.rocksdb.data_dir ", data,
                     " (and not hold it)"));
  }
  // The staging directory is removed before each backup: it must hold
  // nothing else.
  const std::string& staging = c.backup().staging_directory();
  if (!staging.empty() &&
      (overlap(staging, data) || overlap(staging, backups))) {
    return absl::InvalidArgumentError(
        absl::StrCat("backup.staging_directory ", staging,
                     " must be outside storage.rocksdb.data_dir and "
                     "backup.directory (and hold "
                     "neither)"));
  }
  return absl::OkStatus();
}

std::string NormalizeDirectory(absl::string_view path) {
  std::string out =
      std::filesystem::path(std::string(path)).lexically_normal().string();
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out.empty() ? std::string(path) : out;
}

absl::StatusOr<ServerConfig> ParseConfig(absl::string_view text,
                                         absl::string_view source) {
  ServerConfig config;
  if (absl::Status s = ParseTextProto(text, source, &config); !s.ok()) {
    return s;
  }
  if (absl::Status s = Validate(config, source); !s.ok()) return s;
  return config;
}

absl::StatusOr<ServerConfig> LoadConfigFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadTextFile(path, "config file");
  if (!text.ok()) return text.status();
  return ParseConfig(*text, path);
}

absl::Status CheckFileIsPrivate(const std::string& path, absl::string_view what,
                                bool secret) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot stat ", what, " ", path));
  }
  const mode_t loose = secret ? 077 : 022;
  if (st.st_uid != geteuid()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s %s is owned by uid %d, not by the user cardvaultd runs as (uid "
        "%d): chown it",
        what, path, st.st_uid, geteuid()));
  }
  if ((st.st_mode & loose) != 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s %s has mode %04o: it must not be %s by group or others (chmod "
        "%s)",
        what, path, st.st_mode & 07777,
        secret ? "readable or writable" : "writable", secret ? "600" : "go-w"));
  }
  return absl::OkStatus();
}

absl::StatusOr<crypto::SecretBytes> ReadHsmPin(
    const ::cardvault::config::v1::HsmConfig& hsm) {
  std::string pin;
  if (hsm.has_pin_file()) {
    std::ifstream in(hsm.pin_file());
    if (!in) {
      return absl::NotFoundError(
          absl::StrCat("cannot read HSM PIN file ", hsm.pin_file()));
    }
    std::getline(in, pin);
  } else {
    const char* value = std::getenv(hsm.pin_env().c_str());
    if (value == nullptr) {
      return absl::NotFoundError(absl::StrCat(
          "environment variable ", hsm.pin_env(), " (HSM PIN) is not set"));
    }
    pin = value;
  }
  absl::string_view trimmed = absl::StripAsciiWhitespace(pin);
  absl::StatusOr<crypto::SecretBytes> result;
  if (trimmed.empty() || trimmed.size() > kMaxPinBytes) {
    result = absl::InvalidArgumentError("HSM PIN is empty or too long");
  } else {
    result = crypto::SecretBytes(trimmed);
  }
  OPENSSL_cleanse(pin.data(), pin.size());
  return result;
}

}  // namespace cardvault::config
