// cardvaultd: wiring only. Loads the configuration, opens the HSM, storage
// and key ring, and serves TokenVault and grpc.health.v1 over mutual TLS
// until SIGTERM or SIGINT.
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/json_util.h"
#include "hsm/pkcs11_key_wrapper.h"
#include "hsm/pkcs11_token.h"
#include "server/auth/access_policy.h"
#include "server/commit/write_path.h"
#include "server/config/config_loader.h"
#include "server/config/policy_loader.h"
#include "server/config/text_proto.h"
#include "server/coordination/background_work.h"
#include "server/coordination/job_lease.h"
#include "server/coordination/use_reservations.h"
#include "server/crypto/sha256.h"
#include "server/net/connection_table.h"
#include "server/net/tcp_listener.h"
#include "server/service/audit_log_service.h"
#include "server/service/backup_admin_service.h"
#include "server/service/client_trust.h"
#include "server/service/hsm_health_monitor.h"
#include "server/service/key_admin_service.h"
#include "server/service/library_logs.h"
#include "server/service/listener_watchdog.h"
#include "server/service/node_peers.h"
#include "server/service/served_connection_observer.h"
#include "server/service/server_credentials.h"
#include "server/service/serving_gate.h"
#include "server/service/token_vault_service.h"
#include "server/service/unparsed_request_interceptor.h"
#include "server/storage/data_directory.h"
#include "server/storage/postgres_schema.h"
#include "server/storage/postgres_store.h"
#include "server/storage/rocksdb_backup.h"
#include "server/storage/rocksdb_storage.h"
#include "server/util/blocking_executor.h"
#include "server/util/descriptor_budget.h"
#include "server/util/log.h"
#include "server/util/metrics_file.h"
#include "server/util/node_address.h"
#include "server/util/process_hardening.h"
#include "server/vault/backups.h"
#include "server/vault/cvv_cache.h"
#include "server/vault/index_entry.h"
#include "server/vault/kek_manager.h"
#include "server/vault/key_admin.h"
#include "server/vault/key_ring.h"
#include "server/vault/reencryptor.h"
#include "server/vault/restore.h"
#include "server/vault/vault.h"
#include "server/vault/velocity_reservations.h"
#include "server/vault/wrapped_keys.h"

ABSL_FLAG(std::string, config, "",
          "Path of the configuration file (required).");
ABSL_FLAG(std::string, listen_address, "",
          "Overrides listen_address from the configuration.");
ABSL_FLAG(bool, migrate, false,
          "Applies the PostgreSQL schema migrations this build has "
          "(storage.postgres) and exits.");
ABSL_FLAG(std::string, data_dir, "",
          "Overrides storage.rocksdb.data_dir from the configuration.");
ABSL_FLAG(uint32_t, restore_backup, 0,
          "Disaster recovery, with the vault stopped: puts backup ID of "
          "backup.directory in place of the data directory (the old one is "
          "moved aside, never deleted), then exits; the next start records "
          "the restore in the audit trail.");
ABSL_FLAG(uint32_t, verify_backup, 0,
          "Verifies backup ID of backup.directory without touching the live "
          "data, prints the result as JSON and exits: 0 if it verifies, 4 if "
          "not.");
ABSL_FLAG(bool, verify_all_records, false,
          "--verify_backup: open every card record instead of a sample.");
ABSL_FLAG(bool, compact_and_exit, false,
          "Maintenance, with the vault stopped: compacts the token data down "
          "to the last level (expired and deleted values are dropped), then "
          "exits without serving.");

namespace cardvault {
namespace {

constexpr char kServiceName[] = "cardvault.v1.TokenVault";
constexpr absl::Duration kShutdownGrace = absl::Seconds(10);
// Exit status when the listener watchdog gave up (the supervisor restarts).
constexpr int kExitListenerStuck = 3;
// Exit status of --verify_backup when the backup does not verify.
constexpr int kExitBackupBad = 4;

// Checkpoints go to the server log, where operators export them (e.g. to a
// SIEM) so that a truncated audit trail can be proven later.
void LogCheckpoint(const audit::Checkpoint& checkpoint) {
  util::LogComputedValues(
      absl::StrCat("audit checkpoint: sequence=", checkpoint.sequence,
                   " mac=", absl::BytesToHexString(checkpoint.mac)));
}

template <typename T>
T OrDie(absl::StatusOr<T> value, absl::string_view step) {
  if (!value.ok()) {
    util::LogError(absl::StrCat(step, ": ", value.status().ToString()));
    std::exit(1);
  }
  return *std::move(value);
}

// Serving and --compact_and_exit open the database alike, so that the
// maintenance run compacts with the same filter. Expired token data is
// dropped by compaction (see rocksdb_storage.h).
storage::RocksDbStorage::Options StorageOptions(
    const config::ServerConfig& cfg) {
  return {.data_dir = cfg.storage().rocksdb().data_dir(),
          .expiry_of = vault::StoredExpiry};
}

// The connection string, from its own private file: never in the config.
absl::StatusOr<std::string> PostgresConninfo(const config::ServerConfig& cfg) {
  absl::StatusOr<std::string> text = config::ReadTextFile(
      cfg.storage().postgres().conninfo_file(), "PostgreSQL connection file");
  if (!text.ok()) return text.status();
  return std::string(absl::StripAsciiWhitespace(*text));
}

absl::StatusOr<std::unique_ptr<storage::PostgresStore>> OpenPostgres(
    const config::ServerConfig& cfg) {
  absl::StatusOr<std::string> conninfo = PostgresConninfo(cfg);
  if (!conninfo.ok()) return conninfo.status();
  const config::v1::PostgresStorageConfig& pg = cfg.storage().postgres();
  absl::StatusOr<std::unique_ptr<storage::PostgresStore>> store =
      storage::PostgresStore::Open(
          {.conninfo = *std::move(conninfo),
           .pool_size =
               pg.pool_size() == 0 ? 8 : static_cast<int>(pg.pool_size()),
           .expiry_of = vault::StoredExpiry,
           .max_commit_attempts = 5,
           .resolve_timeout = absl::Milliseconds(
               pg.resolve_timeout_ms() == 0 ? 2000 : pg.resolve_timeout_ms())});
  if (!store.ok()) return store.status();
  return *std::move(store);
}

// Where the other nodes reach this one: configured, or the listen address
// (refused by the caller when it is a wildcard).
std::string AdvertisedAddress(const config::ServerConfig& cfg) {
  if (!cfg.cluster().advertise_address().empty()) {
    return cfg.cluster().advertise_address();
  }
  return cfg.listen_address();
}

// The node's name in audit records: configured, or host name and port.
std::string NodeName(const config::ServerConfig& cfg) {
  if (!cfg.node_name().empty()) return cfg.node_name();
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  const std::string& listen = cfg.listen_address();
  const size_t colon = listen.rfind(':');
  return absl::StrCat(host,
                      colon == std::string::npos ? "" : listen.substr(colon));
}

int RunMigrate(const config::ServerConfig& cfg) {
  if (!cfg.storage().has_postgres()) {
    util::LogError("--migrate is for storage.postgres");
    return 1;
  }
  absl::StatusOr<std::string> conninfo = PostgresConninfo(cfg);
  if (!conninfo.ok()) {
    util::LogError(conninfo.status().ToString());
    return 1;
  }
  absl::StatusOr<storage::MigrationReport> report =
      storage::MigratePostgres(*conninfo);
  if (!report.ok()) {
    util::LogError(absl::StrCat("migration: ", report.status().ToString()));
    return 1;
  }
  util::LogInfo(absl::StrCat("PostgreSQL schema at version ",
                             report->to_version, " (was ", report->from_version,
                             ")"));
  return 0;
}

storage::RocksDbBackupStore::Options BackupStoreOptions(
    const config::ServerConfig& cfg, bool read_only) {
  const config::v1::BackupConfig& b = cfg.backup();
  return {.directory = b.directory(),
          .staging_dir = b.staging_directory().empty()
                             ? cfg.storage().rocksdb().data_dir() + ".staging"
                             : b.staging_directory(),
          .rate_limit_bytes_per_second = b.rate_limit_bytes_per_second(),
          .read_only = read_only};
}

vault::VerifyOptions BackupVerifyOptions(const config::ServerConfig& cfg) {
  return {.all_records = absl::GetFlag(FLAGS_verify_all_records),
          .sample_records = cfg.backup().verify_sample_records(),
          .keys_in_hsm = cfg.hsm().seal_in_hsm(),
          .audit_retention = absl::Hours(24 * cfg.audit().retention_days()),
          .now = absl::Now()};
}

// --verify_backup and --restore_backup: maintenance with the HSM open.
int RunBackupTool(const config::ServerConfig& cfg,
                  const hsm::KeyWrapper& wrapper) {
  if (cfg.backup().directory().empty()) {
    util::LogError("backup.directory is not set in the configuration");
    return 1;
  }
  auto backups =
      OrDie(storage::RocksDbBackupStore::Open(
                nullptr, BackupStoreOptions(cfg, /*read_only=*/true)),
            "backup directory");
  if (const uint32_t id = absl::GetFlag(FLAGS_verify_backup); id != 0) {
    // Returns rather than exits: the backup engine's threads must be
    // joined before the process ends.
    // The stopped vault's own trail, if there is one, says which deletions
    // a restore of this backup would undo.
    std::unique_ptr<storage::StoreView> live;
    if (absl::StatusOr<std::unique_ptr<storage::StoreView>> opened =
            storage::OpenReadOnlyView(cfg.storage().rocksdb().data_dir());
        opened.ok()) {
      live = *std::move(opened);
    }
    absl::StatusOr<vault::BackupVerification> verified =
        vault::VerifyBackup(*backups, id, wrapper, BackupVerifyOptions(cfg),
                            live ? &live->audit() : nullptr);
    if (!verified.ok()) {
      util::LogError(
          absl::StrCat("verify backup: ", verified.status().ToString()));
      return 1;
    }
    const vault::BackupVerification& v = *verified;
    v1::BackupVerification out;
    service::VerificationToProto(v, &out);
    std::string json;
    google::protobuf::util::JsonPrintOptions json_options;
    json_options.preserve_proto_field_names = true;
    json_options.always_print_primitive_fields = true;
    (void)google::protobuf::util::MessageToJsonString(out, &json, json_options);
    std::printf("%s\n", json.c_str());
    std::fflush(stdout);
    return v.ok ? 0 : kExitBackupBad;
  }
  const uint32_t id = absl::GetFlag(FLAGS_restore_backup);
  absl::StatusOr<v1::RestoreRecord> restored = vault::RestoreFromBackup(
      {.backups = backups.get(),
       .wrapper = &wrapper,
       .open_read_only = storage::OpenReadOnlyView,
       .check_not_in_use = storage::RocksDbStorage::CheckNotInUse},
      id,
      {.data_dir = cfg.storage().rocksdb().data_dir(),
       .verify = BackupVerifyOptions(cfg),
       .now = absl::Now()});
  if (!restored.ok()) {
    util::LogError(
        absl::StrCat("restore refused: ", restored.status().ToString()));
    return 1;
  }
  util::LogInfo(absl::StrCat(
      "backup ", id, " restored into ", cfg.storage().rocksdb().data_dir(),
      restored->previous_data_dir().empty()
          ? std::string()
          : absl::StrCat("; the old data directory is ",
                         restored->previous_data_dir()),
      "; records lost: ",
      restored->lost_through() > 0
          ? absl::StrCat(restored->lost_from(), "..", restored->lost_through())
          : (restored->lost_from() == 0 ? std::string("none")
                                        : std::string("unknown")),
      "; deletions undone: ", restored->deletions_undone(),
      restored->deletions_undone() > 0
          ? absl::StrCat(" (tokens listed in ", restored->previous_data_dir(),
                         ".deletions-undone: delete them again)")
          : std::string()));
  return 0;
}

int Run(const sigset_t& stop_signals) {
  // Whoever can write these files controls the vault: only its own user.
  if (absl::Status s = config::CheckFileIsPrivate(absl::GetFlag(FLAGS_config),
                                                  "config file", false);
      !s.ok()) {
    util::LogError(s.ToString());
    return 1;
  }
  config::ServerConfig cfg =
      OrDie(config::LoadConfigFile(absl::GetFlag(FLAGS_config)), "config");
  for (const auto& [path, what, secret] :
       {std::tuple{cfg.policy().file(), "policy file", false},
        std::tuple{cfg.hsm().pin_file(), "HSM PIN file", true},
        std::tuple{cfg.storage().postgres().conninfo_file(),
                   "PostgreSQL connection file", true},
        std::tuple{cfg.cluster().client_key_file(), "cluster client key",
                   true}}) {
    if (path.empty()) continue;
    if (absl::Status s = config::CheckFileIsPrivate(path, what, secret);
        !s.ok()) {
      util::LogError(s.ToString());
      return 1;
    }
  }
  if (!absl::GetFlag(FLAGS_listen_address).empty()) {
    cfg.set_listen_address(absl::GetFlag(FLAGS_listen_address));
  }
  const bool embedded = cfg.storage().has_rocksdb();
  if (absl::GetFlag(FLAGS_migrate)) return RunMigrate(cfg);
  if (!embedded && (absl::GetFlag(FLAGS_compact_and_exit) ||
                    absl::GetFlag(FLAGS_verify_backup) != 0 ||
                    absl::GetFlag(FLAGS_restore_backup) != 0 ||
                    !absl::GetFlag(FLAGS_data_dir).empty())) {
    util::LogError(
        "--compact_and_exit, --verify_backup, --restore_backup and --data_dir "
        "are for storage.rocksdb");
    return 1;
  }
  if (!absl::GetFlag(FLAGS_data_dir).empty()) {
    cfg.mutable_storage()->mutable_rocksdb()->set_data_dir(
        config::NormalizeDirectory(absl::GetFlag(FLAGS_data_dir)));
    if (absl::Status s = config::CheckBackupDirectory(cfg); !s.ok()) {
      util::LogError(s.ToString());
      return 1;
    }
  }
  // One process at a time works on the data directory: a serving vault, a
  // restore, a compaction (--verify_backup reads only backups).
  std::optional<storage::DirectoryLock> directory_lock;
  if (embedded && absl::GetFlag(FLAGS_verify_backup) == 0) {
    directory_lock.emplace(OrDie(
        storage::DirectoryLock::Acquire(cfg.storage().rocksdb().data_dir()),
        "data directory"));
  }
  // Descriptors for the database, the HSM and the logs are kept out of the
  // connections' share before anything opens them.
  const uint64_t reserved_descriptors =
      cfg.listener().reserved_descriptors() != 0
          ? cfg.listener().reserved_descriptors()
          : util::kBaseReservedDescriptors +
                std::max<uint64_t>(
                    1024,
                    2 * util::FilesUnder(cfg.storage().rocksdb().data_dir()));
  const util::DescriptorBudget budget = OrDie(
      util::RaiseDescriptorLimit(reserved_descriptors), "descriptor budget");
  util::LogInfo(absl::StrCat("process hardening: ", util::HardeningReport(),
                             " ", budget.Report()));
  if (absl::GetFlag(FLAGS_compact_and_exit)) {
    auto storage =
        OrDie(storage::RocksDbStorage::Open(StorageOptions(cfg)), "storage");
    if (absl::Status s = storage->CompactTokenData(); !s.ok()) {
      util::LogError(absl::StrCat("compaction: ", s.ToString()));
      return 1;
    }
    util::LogInfo("token data compacted");
    return 0;
  }

  auto token = OrDie(
      hsm::Pkcs11Token::Open({.module_path = cfg.hsm().module_path(),
                              .token_label = cfg.hsm().token_label(),
                              .max_sessions = cfg.hsm().max_sessions()},
                             OrDie(config::ReadHsmPin(cfg.hsm()), "HSM PIN")),
      "HSM");
  auto wrapper =
      OrDie(hsm::Pkcs11KeyWrapper::Create(token->sessions()), "HSM wrapper");
  if (absl::GetFlag(FLAGS_verify_backup) != 0 ||
      absl::GetFlag(FLAGS_restore_backup) != 0) {
    return RunBackupTool(cfg, *wrapper);
  }
  std::unique_ptr<storage::RocksDbStorage> embedded_store;
  std::unique_ptr<storage::PostgresStore> storage;
  if (embedded) {
    embedded_store =
        OrDie(storage::RocksDbStorage::Open(StorageOptions(cfg)), "storage");
  } else {
    storage = OrDie(OpenPostgres(cfg), "PostgreSQL storage");
  }
  storage::Store* const store =
      embedded ? static_cast<storage::Store*>(embedded_store.get())
               : storage.get();
  const bool backups_on = !cfg.backup().directory().empty();
  const bool restored =
      embedded && vault::RestorePending(cfg.storage().rocksdb().data_dir());
  // Completes (or rolls back) a KEK rotation a crash interrupted; after a
  // restore, rolls forward to the KEKs the vault rotated to since.
  vault::KekManager::OpenReport kek_report;
  auto kek = OrDie(vault::KekManager::Open(
                       store, wrapper.get(),
                       {.initial_label = cfg.hsm().kek_label(),
                        .create_if_missing = cfg.hsm().create_kek_if_missing(),
                        .retain_old_keks = backups_on,
                        .adopt_newer_keks = restored},
                       &kek_report),
                   "HSM key-encryption key");
  bool created_data_key = false;
  vault::KeyRing::Options key_options;
  key_options.max_encryptions_per_key = cfg.keys().max_encryptions_per_key();
  key_options.cryptoperiod = absl::Hours(24 * cfg.keys().cryptoperiod_days());
  key_options.keys_in_hsm = cfg.hsm().seal_in_hsm();
  // Encryptions under a data key are reserved in blocks in the store, so
  // nodes sharing it never pass the GCM bound together; keys other nodes
  // make or destroy are picked up every 10 s.
  auto use_reservations = OrDie(
      coordination::UseReservations::Create(store, {}), "use reservations");
  key_options.reservations = use_reservations.get();
  key_options.refresh_interval = absl::Seconds(10);
  // Only several nodes can lag behind a rotation (one embedded store, one
  // process).
  key_options.retire_grace = absl::Seconds(
      cfg.keys().retire_grace_seconds() != 0 ? cfg.keys().retire_grace_seconds()
                                             : (embedded ? 0 : 30));
  auto keys =
      OrDie(vault::KeyRing::Load(kek.get(), key_options, &created_data_key),
            "data keys");
  const std::string policy_text =
      OrDie(config::ReadTextFile(cfg.policy().file(), "policy file"), "policy");
  auth::PolicyHolder policy(
      OrDie(config::ParsePolicy(policy_text, cfg.policy().file()), "policy"));
  vault::MacKey audit_key =
      OrDie(vault::LoadMacKey(kek.get(), vault::kAuditKeyPrefix), "audit key");
  const bool audit_key_created = audit_key.created;
  const uint32_t audit_key_version = audit_key.version;
  // A restore's marker is checked under the audit key before the trail
  // takes the key; a forged one stops the start.
  const std::optional<v1::RestoreRecord> restore_record =
      embedded
          ? OrDie(vault::ReadRestoreMarker(cfg.storage().rocksdb().data_dir(),
                                           *audit_key.mac, audit_key.version),
                  "restore marker")
          : std::nullopt;
  vault::MacKey index_key = OrDie(
      vault::LoadMacKey(kek.get(), vault::kPanIndexKeyPrefix), "PAN index key");
  vault::MacKey fingerprint_key =
      OrDie(vault::LoadMacKey(kek.get(), vault::kFingerprintKeyPrefix),
            "fingerprint key");
  vault::MacKey operation_key =
      OrDie(vault::LoadMacKey(kek.get(), vault::kOperationMacKeyPrefix),
            "operation key");
  auto cvv_cache =
      OrDie(vault::CvvCache::Create(
                {.ttl = absl::Seconds(cfg.tokens().cvv_ttl_seconds()),
                 .max_entries = cfg.tokens().max_cvv_entries()}),
            "CVV cache");
  auto audit_log = OrDie(
      commit::WritePath::Open(
          store, store, std::move(audit_key.mac), audit_key.version,
          {.on_checkpoint = LogCheckpoint,
           .retention = absl::Hours(24 * cfg.audit().retention_days()),
           .refusals = {.per_minute =
                            cfg.limits().refusals_recorded_per_minute()},
           .resume_after_sequence =
               restore_record.has_value() ? restore_record->lost_through() : 0,
           .defer_background_jobs = restore_record.has_value(),
           .node = NodeName(cfg)}),
      "audit trail");
  // The restore is the first thing the restored trail records.
  if (restore_record.has_value()) {
    if (absl::Status s = vault::RecordRestore(
            cfg.storage().rocksdb().data_dir(), *restore_record, *audit_log,
            *store, absl::Now());
        !s.ok()) {
      util::LogError(absl::StrCat("cannot record the restore: ", s.ToString()));
      return 1;
    }
    audit_log->StartBackgroundJobs();
  }
  vault::Vault::Options vault_options;
  vault_options.idempotency_window =
      absl::Seconds(cfg.tokens().idempotency_window_seconds());
  vault_options.max_batch_items = cfg.tokens().max_batch_items();
  // On PostgreSQL, nodes may share the database: daily velocity limits
  // hold for all of them together (auth::RateLimiter, "Several nodes").
  // One process alone opens a RocksDB directory: its own counts suffice.
  std::unique_ptr<coordination::UseReservations> day_reservations;
  if (!embedded) {
    day_reservations = OrDie(coordination::UseReservations::Create(store, {}),
                             "velocity reservations");
  }
  // With a cluster block, a CVV given at another node is taken from it.
  std::unique_ptr<service::GrpcCvvPeers> cvv_peers;
  if (cfg.has_cluster()) {
    const config::v1::ClusterConfig& cluster = cfg.cluster();
    vault_options.node_address = AdvertisedAddress(cfg);
    if (!util::IsNodeAddress(vault_options.node_address)) {
      util::LogError(
          "cluster.advertise_address is required when listen_address is not "
          "an address other nodes can reach (a wildcard, or not host:port)");
      return 1;
    }
    cvv_peers =
        OrDie(service::GrpcCvvPeers::Create(
                  {.server_ca_file = cluster.server_ca_file(),
                   .client_cert_file = cluster.client_cert_file(),
                   .client_key_file = cluster.client_key_file(),
                   .deadline = absl::Milliseconds(cluster.peer_deadline_ms()),
                   .max_peers = 64,
                   .max_in_flight_per_peer = 4,
                   .max_waiting_per_peer = 4096}),
              "cluster client certificate");
  }
  auto vault =
      OrDie(vault::Vault::Create({.records = store,
                                  .keys = keys.get(),
                                  .index_key = index_key.mac.get(),
                                  .fingerprint_key = fingerprint_key.mac.get(),
                                  .cvv_cache = cvv_cache.get(),
                                  .policy = &policy,
                                  .audit = audit_log.get(),
                                  .day_reservations = day_reservations.get(),
                                  .cvv_peers = cvv_peers.get()},
                                 std::move(vault_options)),
            "vault");
  // Daily velocity counts survive a restart (written with each record).
  vault->ResumeVelocityCounts(OrDie(store->KeyUses(), "velocity counts"));
  // Moves records off decrypt-only data keys, at start and then hourly.
  auto reencryptor =
      OrDie(vault::Reencryptor::Create(
                store, keys.get(), audit_log.get(),
                {.chunk_records = cfg.keys().reencrypt_chunk_records()}),
            "re-encryption job");
  // Keys outside the data-key ring, for the inventory (never material).
  std::vector<vault::KeyInfo> other_keys;
  for (const auto& [prefix, purpose, version] :
       {std::tuple{vault::kAuditKeyPrefix, "audit chain", audit_key_version},
        std::tuple{vault::kPanIndexKeyPrefix, "PAN index", index_key.version},
        std::tuple{vault::kFingerprintKeyPrefix, "fingerprint",
                   fingerprint_key.version},
        std::tuple{vault::kOperationMacKeyPrefix, "dual-control operations",
                   operation_key.version}}) {
    other_keys.push_back({.id = vault::WrappedKeyId(prefix, version),
                          .version = version,
                          .purpose = purpose,
                          .algorithm = "HMAC-SHA256"});
  }
  std::unique_ptr<storage::RocksDbBackupStore> backup_store;
  std::unique_ptr<vault::Backups> backups;
  if (backups_on) {
    backup_store =
        OrDie(storage::RocksDbBackupStore::Open(embedded_store.get(),
                                                BackupStoreOptions(cfg, false)),
              "backup directory");
    backups =
        OrDie(vault::Backups::Create(
                  {.store = backup_store.get(),
                   .wrapper = wrapper.get(),
                   .policy = &policy,
                   .audit = audit_log.get(),
                   .live_trail = store},
                  {.interval = absl::Seconds(cfg.backup().interval_seconds()),
                   .keep = cfg.backup().keep(),
                   .verify = BackupVerifyOptions(cfg)}),
              "backups");
  }
  auto key_admin =
      OrDie(vault::KeyAdmin::Create(
                {.keys = keys.get(),
                 .kek = kek.get(),
                 .reencryptor = reencryptor.get(),
                 .vault = vault.get(),
                 .policy = &policy,
                 .audit = audit_log.get(),
                 .records = store,
                 .operation_mac = {.mac = operation_key.mac.get(),
                                   .version = operation_key.version},
                 .other_keys = std::move(other_keys),
                 .backups = backup_store.get()},
                {.required_approvals = cfg.keys().required_approvals(),
                 .proposal_ttl = absl::Hours(cfg.keys().proposal_ttl_hours()),
                 .node = NodeName(cfg)}),
            "key administration");
  // Revocation applies while serving: the CRLs are re-read every refresh.
  std::unique_ptr<service::ClientTrust> client_trust;
  if (cfg.tls().crl_directory().empty()) {
    util::LogError(
        "ALERT tls.crl_directory is not set: revoked client certificates are "
        "not refused; set it for production (README, Revocation)");
  } else {
    client_trust = OrDie(
        service::ClientTrust::Create(
            {.ca_file = cfg.tls().client_ca_file(),
             .crl_dir = cfg.tls().crl_directory(),
             .refresh = absl::Seconds(cfg.tls().refresh_interval_seconds()),
             .expiry_warning =
                 absl::Hours(24 * cfg.tls().crl_expiry_warning_days())}),
        "TLS revocation");
  }
  auto credentials =
      OrDie(service::MutualTlsServerCredentials(cfg.tls(), client_trust.get()),
            "TLS");

  auto vault_executor =
      OrDie(util::BlockingExecutor::Create(
                {.threads = cfg.limits().vault_threads(),
                 .max_queued = cfg.limits().max_queued_calls()}),
            "vault threads");
  service::CallsInFlight calls_in_flight(cfg.limits().max_calls_per_identity());
  service::TokenVaultService token_vault(
      vault.get(), vault_executor.get(), &calls_in_flight,
      {.start_on_executor = cfg.hsm().seal_in_hsm()});
  service::AuditLogService audit_service(vault.get(), &calls_in_flight);
  service::KeyAdminService key_admin_service(key_admin.get(), vault.get(),
                                             &calls_in_flight);
  service::BackupAdminService backup_service(backups.get(), vault.get(),
                                             &calls_in_flight);
  service::NodePeerService node_peer_service(vault.get(), &calls_in_flight);
  // cardvaultd accepts TCP itself: gRPC gets only admitted connections.
  const config::v1::ListenerConfig& listener_cfg = cfg.listener();
  const absl::Duration handshake_timeout =
      absl::Seconds(listener_cfg.handshake_timeout_seconds());
  // The watchdog's probes come in through a socket only this user can
  // reach, never through the public port's admission.
  const std::string probe_dir =
      OrDie(net::MakeProbeDirectory(), "watchdog probe directory");
  const std::string probe_socket = probe_dir + "/probe.sock";
  auto listener = OrDie(
      net::TcpListener::Create(
          {.address = cfg.listen_address(),
           .admission = OrDie(
               net::AdmissionLimits(
                   budget.for_connections,
                   uint64_t{listener_cfg.memory_limit_mb()} << 20,
                   listener_cfg.max_connections(),
                   listener_cfg.max_connections_per_source(),
                   listener_cfg.max_pending_handshakes(),
                   listener_cfg.max_new_connections_per_second_per_source(),
                   handshake_timeout),
               "listener limits"),
           .probe_socket_path = probe_socket}),
      "listener");
  const int port = listener->port();
  util::LogInfo(absl::StrCat(
      "listener admission: max_connections=",
      listener->admission().max_connections,
      " max_connections_per_source=", listener->admission().max_per_source,
      " max_pending_handshakes=", listener->admission().max_pending,
      " handshake_timeout=", absl::FormatDuration(handshake_timeout)));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor =
      builder.experimental().AddExternalConnectionAcceptor(
          grpc::ServerBuilder::experimental_type::ExternalConnectionType::
              FROM_FD,
          credentials);
  builder.RegisterService(&token_vault);
  builder.RegisterService(&audit_service);
  builder.RegisterService(&key_admin_service);
  builder.RegisterService(&backup_service);
  if (cfg.has_cluster()) builder.RegisterService(&node_peer_service);
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(cfg.limits().max_request_bytes()));
  builder.SetSyncServerOption(
      grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 2);
  // What one peer may hold: streams per connection, a bounded connection
  // life (so revocation reaches open connections), idle connections closed,
  // keepalive pings answered only at a bounded rate.
  const config::v1::LimitsConfig& limits = cfg.limits();
  for (const auto& [name, value] :
       {std::pair{GRPC_ARG_MAX_CONCURRENT_STREAMS,
                  static_cast<int>(limits.max_concurrent_streams())},
        std::pair{GRPC_ARG_MAX_CONNECTION_AGE_MS,
                  static_cast<int>(limits.max_connection_age_seconds() * 1000)},
        std::pair{
            GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
            static_cast<int>(limits.max_connection_age_grace_seconds() * 1000)},
        std::pair{
            GRPC_ARG_MAX_CONNECTION_IDLE_MS,
            static_cast<int>(limits.max_connection_idle_seconds() * 1000)},
        std::pair{GRPC_ARG_KEEPALIVE_TIME_MS, 60 * 1000},
        std::pair{GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20 * 1000},
        std::pair{
            GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
            static_cast<int>(limits.min_client_ping_interval_seconds() * 1000)},
        std::pair{GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2},
        std::pair{
            GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
            static_cast<int>(absl::ToInt64Milliseconds(handshake_timeout))}}) {
    builder.AddChannelArgument(name, value);
  }
  // Requests that do not parse get INVALID_ARGUMENT and a record.
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(
      std::make_unique<service::UnparsedRequestInterceptorFactory>(
          vault.get()));
  // Connections that carry a call are established: never evicted.
  interceptors.push_back(std::make_unique<service::ServedConnectionObserver>(
      [&listener] { return listener->WantsServedPeers(); },
      [&listener](absl::string_view peer) { listener->NoteServed(peer); }));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  grpc::ResourceQuota quota("cardvaultd");
  quota.SetMaxThreads(static_cast<int>(cfg.limits().max_server_threads()));
  quota.Resize(size_t{listener_cfg.memory_limit_mb()} << 20);
  builder.SetResourceQuota(quota);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    util::LogError(absl::StrCat("cannot serve on ", cfg.listen_address()));
    return 1;
  }
  listener->Start([acceptor](int listener_fd, int fd) {
    grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters
        connection;
    connection.listener_fd = listener_fd;
    connection.fd = fd;
    acceptor->HandleNewConnection(&connection);
  });
  if (absl::Status s = vault->RecordLifecycle(
          v1::SERVER_START,
          absl::StrCat("policy sha256=", crypto::Sha256Hex(policy_text)));
      !s.ok()) {
    util::LogError("cannot record server start in the audit trail");
    return 1;
  }
  // Keys made on this start (first start of a vault) go into the trail; the
  // audit key itself is recorded once the trail it protects exists.
  const std::string& kek_label = kek_report.kek_label;
  for (const auto& [created, detail] :
       {std::pair{kek_report.created_kek,
                  absl::StrCat("created KEK \"", kek_label,
                               "\" in the HSM: AES-256, sensitive, "
                               "non-extractable")},
        std::pair{kek_report.resumed,
                  absl::StrCat("completed the KEK rotation a stop "
                               "interrupted: every key is wrapped under \"",
                               kek_label, "\", the old KEK destroyed")},
        std::pair{kek_report.adopted > 0,
                  absl::StrCat("after the restore, rolled forward ",
                               kek_report.adopted,
                               " KEK generation(s) the vault rotated to since "
                               "the backup: every key is wrapped under \"",
                               kek_label, "\"")},
        std::pair{kek_report.rolled_back,
                  std::string("destroyed an unused KEK a stopped rotation "
                              "left in the HSM (rotation rolled back)")},
        std::pair{created_data_key,
                  absl::StrCat("created data key ", vault::DataKeyId(1),
                               ": AES-256 generated in the HSM, stored "
                               "wrapped under KEK \"",
                               kek_label, "\"")},
        std::pair{audit_key_created,
                  absl::StrCat("created audit key audit-mac/00000001: 256 "
                               "bits generated in the HSM, stored wrapped "
                               "under KEK \"",
                               kek_label, "\"")},
        std::pair{index_key.created,
                  absl::StrCat("created PAN index key pan-index/00000001: "
                               "256 bits generated in the HSM, stored "
                               "wrapped under KEK \"",
                               kek_label, "\"")},
        std::pair{fingerprint_key.created,
                  absl::StrCat("created fingerprint key "
                               "fingerprint/00000001: 256 bits generated in "
                               "the HSM, stored wrapped under KEK \"",
                               kek_label, "\"")},
        std::pair{operation_key.created,
                  absl::StrCat("created operation key "
                               "operation-mac/00000001: 256 bits generated in "
                               "the HSM, stored wrapped under KEK \"",
                               kek_label, "\"")}}) {
    if (created && !vault->RecordKeyEvent(detail).ok()) {
      util::LogError("cannot record a key event in the audit trail");
      return 1;
    }
  }
  // One node at a time does the background work; another resumes it
  // within the lease's ttl when that node dies.
  auto background_lease =
      OrDie(coordination::JobLease::Create(store, audit_log.get(),
                                           {.holder = NodeName(cfg)}),
            "background lease");
  std::vector<coordination::BackgroundJob> jobs;
  jobs.push_back({.name = "audit-purge",
                  .interval = absl::Hours(24),
                  .run =
                      [&](const storage::Condition& fence) {
                        return audit_log->Purge(absl::Now(), fence).status();
                      },
                  .cancel = nullptr});
  jobs.push_back(
      {.name = "reencrypt",
       .interval = absl::Seconds(cfg.keys().reencrypt_interval_seconds()),
       .run =
           [&](const storage::Condition& fence) {
             return reencryptor->RunScheduledPass(fence);
           },
       .cancel = [&] { reencryptor->Stop(); }});
  if (!embedded) {
    const config::v1::PostgresStorageConfig& pg = cfg.storage().postgres();
    const size_t batch = pg.sweep_batch() == 0 ? 1000 : pg.sweep_batch();
    jobs.push_back(
        {.name = "ttl-sweep",
         .interval = absl::Seconds(pg.sweep_interval_seconds() == 0
                                       ? 60
                                       : pg.sweep_interval_seconds()),
         .run =
             [&storage, batch](const storage::Condition&) {
               return storage->SweepAllExpired(absl::Now(), batch);
             },
         .cancel = nullptr});
    // Reservations of daily velocity uses of days before yesterday.
    jobs.push_back({.name = "velocity-purge",
                    .interval = absl::Hours(1),
                    .run =
                        [store, batch](const storage::Condition& fence) {
                          return vault::PurgeVelocityReservations(
                                     *store, *store, absl::Now(), fence, batch)
                              .status();
                        },
                    .cancel = nullptr});
  }
  auto background = OrDie(coordination::BackgroundWork::Start(
                              background_lease.get(), std::move(jobs), {}),
                          "background work");
  // Policy changes apply without a restart; a bad file is refused (logged
  // and audited) and the policy in force stays.
  std::atomic<uint64_t> refused_policy_reloads{0};
  config::PolicyFileWatcher policy_watcher(
      cfg.policy().file(), policy_text,
      absl::Seconds(cfg.policy().reload_interval_seconds()), &policy,
      [&vault, &refused_policy_reloads](const config::PolicyReload& reload) {
        const std::string detail =
            reload.outcome.ok()
                ? absl::StrCat("policy sha256=", reload.sha256_hex, "; ",
                               reload.changes)
                : absl::StrCat("refused policy sha256=", reload.sha256_hex);
        if (reload.outcome.ok()) {
          util::LogInfo(absl::StrCat("policy reloaded: ", detail));
        } else {
          ++refused_policy_reloads;
          util::LogError(
              absl::StrCat("policy reload refused, previous policy "
                           "stays in force (",
                           detail, "): ", reload.outcome.ToString()));
        }
        (void)vault->RecordPolicyReload(reload.outcome, detail);
      });
  // Health is served while the HSM answers and the listener accepts.
  service::ServingGate serving(
      server->GetHealthCheckService(),
      {"", kServiceName, "cardvault.v1.AuditLog", "cardvault.v1.KeyAdmin",
       "cardvault.v1.BackupAdmin"});

  absl::Mutex give_up_mu;
  std::string give_up_reason;
  std::unique_ptr<service::ListenerWatchdog> watchdog;
  if (listener_cfg.watchdog().client_cert_file().empty()) {
    util::LogError(
        "ALERT listener.watchdog is not set: a listener that stops accepting "
        "is not detected and the process is not restarted (README, "
        "Connections)");
  } else {
    const config::v1::WatchdogConfig& w = listener_cfg.watchdog();
    watchdog = OrDie(service::ListenerWatchdog::Start(
                         {.target = absl::StrCat("unix:", probe_socket),
                          .client_cert_file = w.client_cert_file(),
                          .client_key_file = w.client_key_file(),
                          .server_ca_file = w.server_ca_file(),
                          .server_name = w.server_name(),
                          .interval = absl::Seconds(w.interval_seconds()),
                          .exit_after = absl::Seconds(w.exit_after_seconds())},
                         [&](bool ready) { serving.Set("listener", ready); },
                         [&](absl::string_view reason) {
                           util::LogError(absl::StrCat(
                               "ALERT ", reason, ": stopping for a restart"));
                           {
                             absl::MutexLock lock(&give_up_mu);
                             give_up_reason = std::string(reason);
                           }
                           kill(getpid(), SIGTERM);
                         }),
                     "listener watchdog");
  }
  std::optional<util::MetricsFile> metrics;
  if (!cfg.metrics().file().empty()) {
    metrics.emplace(
        cfg.metrics().file(),
        std::vector<util::Counter>{
            {"cardvault_audit_write_failures_total",
             "Audit records that could not be written (requests failed "
             "closed).",
             [&] { return audit_log->write_failures(); }},
            {"cardvault_detokenize_velocity_denials_total",
             "Detokenize calls refused by a per-identity velocity limit.",
             [&] { return vault->velocity_denials(); }},
            {"cardvault_policy_reload_failures_total",
             "Policy file changes refused as invalid.",
             [&] { return refused_policy_reloads.load(); }},
            {"cardvault_reencrypted_records_total",
             "Card records moved from decrypt-only data keys to the primary.",
             [&] { return reencryptor->reencrypted_total(); }},
            {"cardvault_reencrypt_passes_total",
             "Re-encryption passes completed since start.",
             [&] { return reencryptor->passes(); }},
            {"cardvault_records_under_old_keys",
             "Card records still under decrypt-only data keys at the end of "
             "the last re-encryption pass.",
             [&] { return reencryptor->pending(); }, /*gauge=*/true},
            {"cardvault_data_key_version", "Version of the primary data key.",
             [&] { return uint64_t{keys->primary_version()}; },
             /*gauge=*/true},
            {"cardvault_calls_over_identity_limit_total",
             "Calls refused because their identity had "
             "limits.max_calls_per_identity calls in flight.",
             [&] { return calls_in_flight.refused(); }},
            {"cardvault_refusals_summarised_total",
             "Refused calls past a caller's recording rate, counted into "
             "REFUSALS_SUMMARY records instead of recorded one by one.",
             [&] { return audit_log->summarised_refusals(); }},
            {"cardvault_audit_overload_refusals_total",
             "Audit records refused because too many were pending (calls "
             "failed with UNAVAILABLE, nothing written).",
             [&] { return audit_log->overload_refusals(); }},
            {"cardvault_client_handshakes_refused_total",
             "Client certificates refused at the handshake by the CRLs in "
             "force (revoked, or their CA's CRL missing or expired).",
             [&] {
               return client_trust ? client_trust->refused_handshakes() : 0;
             }},
            {"cardvault_connections_admitted_total",
             "TCP connections admitted and handed to gRPC for mutual TLS.",
             [&] { return listener->stats().admitted; }},
            {"cardvault_connections_refused_total",
             "TCP connections reset before TLS because listener."
             "max_connections was reached.",
             [&] { return listener->stats().refused_total; }},
            {"cardvault_connections_refused_per_source_total",
             "TCP connections reset before TLS because their source "
             "address had listener.max_connections_per_source open.",
             [&] { return listener->stats().refused_per_source; }},
            {"cardvault_connections_refused_pending_total",
             "TCP connections reset before TLS because listener."
             "max_pending_handshakes was reached.",
             [&] { return listener->stats().refused_pending; }},
            {"cardvault_connections_refused_rate_total",
             "TCP connections reset before TLS because their source opened "
             "more than listener.max_new_connections_per_second_per_source.",
             [&] { return listener->stats().refused_rate; }},
            {"cardvault_connections_evicted_total",
             "Connections still in their handshake closed to admit one from "
             "an address holding fewer.",
             [&] { return listener->stats().evicted; }},
            {"cardvault_accept_failures_total",
             "accept(2) calls that failed (the listener backs off and "
             "retries).",
             [&] { return listener->stats().accept_failures; }},
            {"cardvault_descriptor_exhaustion_total",
             "Times a descriptor could not be had (EMFILE or ENFILE).",
             [] { return util::DescriptorExhaustions(); }},
            {"cardvault_connections_open",
             "Client connections open (handed to gRPC, not yet closed).",
             [&] { return listener->stats().open; }, /*gauge=*/true},
            {"cardvault_connections_pending",
             "Client connections that have carried no call yet and are "
             "younger than the handshake deadline.",
             [&] { return listener->stats().pending; }, /*gauge=*/true},
            {"cardvault_connection_descriptor_budget",
             "Descriptors the budget leaves for client connections.",
             [&] { return budget.for_connections; }, /*gauge=*/true},
            {"cardvault_listener_ready",
             "1 while the listener watchdog's mutual-TLS health calls to "
             "the vault's own port succeed.",
             [&] { return uint64_t{!watchdog || watchdog->ready() ? 1u : 0u}; },
             /*gauge=*/true},
            {"cardvault_listener_probe_failures_total",
             "Listener watchdog probes that failed.",
             [&] { return watchdog ? watchdog->failures() : 0; }},
            {"cardvault_backups_total",
             "Backups taken since start (on demand and scheduled).",
             [&] { return backups ? backups->taken() : 0; }},
            {"cardvault_backup_failures_total",
             "Backups that failed since start (each also an ALERT line when "
             "scheduled, and a BACKUP audit record).",
             [&] { return backups ? backups->failures() : 0; }},
            {"cardvault_last_backup_timestamp_seconds",
             "Unix time of the last backup taken since start (0: none).",
             [&] {
               return backups
                          ? static_cast<uint64_t>(backups->last_success_unix())
                          : 0;
             },
             /*gauge=*/true},
            {"cardvault_client_crl_seconds_until_expiry",
             "Seconds until the first client CA's CRL reaches its "
             "nextUpdate (0: one has, and its clients are refused).",
             [&] {
               return client_trust ? client_trust->seconds_until_crl_expiry()
                                   : 0;
             },
             /*gauge=*/true},
        },
        absl::Seconds(cfg.metrics().interval_seconds()));
  }
  serving.Set("hsm", true);
  // The HSM is watched from now on: health follows it.
  service::HsmHealthMonitor hsm_monitor(
      [&token] { return token->Probe(); },
      [&serving](bool ok) { serving.Set("hsm", ok); },
      {.interval = absl::Seconds(cfg.hsm().health_check_interval_seconds())});
  util::LogInfo(absl::StrCat("data keys loaded: ", keys->size(),
                             ", primary version ", keys->primary_version()));
  std::printf("cardvaultd ready: TokenVault on %s (mutual TLS), port %d\n",
              cfg.listen_address().c_str(), port);
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  util::LogInfo(
      absl::StrCat("signal ", signal_number, " received: draining requests"));
  std::string stop_reason;
  {
    absl::MutexLock lock(&give_up_mu);
    stop_reason = give_up_reason;
  }
  metrics.reset();
  watchdog.reset();
  // No new connections; calls still running may report theirs to it.
  listener->Stop();
  rmdir(probe_dir.c_str());
  server->GetHealthCheckService()->Shutdown();
  server->Shutdown(absl::ToChronoTime(absl::Now() + kShutdownGrace));
  server->Wait();
  if (!vault->RecordLifecycle(v1::SERVER_STOP, stop_reason).ok()) {
    util::LogError("cannot record server stop in the audit trail");
  }
  util::LogInfo(stop_reason.empty() ? std::string("stopped")
                                    : absl::StrCat("stopped: ", stop_reason));
  return stop_reason.empty() ? 0 : kExitListenerStuck;
}

}  // namespace
}  // namespace cardvault

// jemalloc's settings, read when it starts (other allocators ignore the
// symbol): freed pages go back to the system after a second, from a
// background thread, and two arenas serve the two cores. Resident size at
// the end of a bulk load went from 267 to 228 MiB (docs/benchmarks.md).
extern "C" {
const char* malloc_conf =
    "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2";
}

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "cardvaultd --config=FILE [--listen_address=HOST:PORT] [--data_dir=DIR] "
      "[--restore_backup=ID | --verify_backup=ID [--verify_all_records]]");
  absl::ParseCommandLine(argc, argv);
  // gRPC and protobuf quote what peers send: through the masking logger.
  cardvault::service::RouteLibraryLogs();
  // Debian's abseil checks every Mutex acquisition for lock-order cycles
  // (1-2% of a Tokenize under load); the tests keep the check on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  if (absl::Status s = cardvault::util::HardenProcess(); !s.ok()) {
    cardvault::util::LogError(s.ToString());
    return 1;
  }
  if (absl::GetFlag(FLAGS_config).empty()) {
    cardvault::util::LogError("--config is required");
    return 2;
  }
  // gRPC would take this list instead of its ECDHE+AEAD suites (the floor
  // tests/integration/tls_floor_test.cc proves): never serve with it.
  if (std::getenv("GRPC_SSL_CIPHER_SUITES") != nullptr) {
    cardvault::util::LogError(
        "GRPC_SSL_CIPHER_SUITES is set: it would replace the TLS 1.2 cipher "
        "suites (ECDHE with AEAD only) cardvaultd requires; unset it");
    return 1;
  }
  // Block the stop signals before any thread starts, so that only sigwait
  // in Run receives them and shutdown is orderly.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  return cardvault::Run(stop_signals);
}
