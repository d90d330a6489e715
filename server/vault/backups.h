// Backups of the vault (PCI DSS 10.3.3, 12.10.1): taken on demand by an
// admin or on a schedule, listed, verified and deleted; every one is an
// audit record (BACKUP). Knows nothing of gRPC or RocksDB: the backup store
// (storage/backup_store.h) makes the consistent copies.
//
// A backup holds what the data directory holds (ciphertext, wrapped keys,
// keyed digests, audit records): never a key in clear, never a CVV (CVVs
// exist only in memory, vault/cvv_cache.h). Restoring one needs the HSM to
// hold every KEK its manifest lists, which is why old KEKs are retained
// while backups need them (kek_manager.h).
//
// Verification never touches the live data: the backup is opened read-only
// in place, its files checked against their checksums, its tables against
// the manifest's digests, its data keys unwrapped through the HSM, a sample
// of records (or all) opened, and its audit chain verified.
//
// Thread safety: thread-safe; one backup at a time.
#ifndef CARDVAULT_SERVER_VAULT_BACKUPS_H_
#define CARDVAULT_SERVER_VAULT_BACKUPS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "hsm/key_wrapper.h"
#include "server/auth/access_policy.h"
#include "server/commit/write_path.h"
#include "server/storage/backup_store.h"
#include "server/util/blocking_executor.h"
#include "server/vault/backup_manifest.h"

namespace cardvault::vault {

inline constexpr char kCreateBackupRpc[] =
    "/cardvault.v1.BackupAdmin/CreateBackup";
inline constexpr char kListBackupsRpc[] =
    "/cardvault.v1.BackupAdmin/ListBackups";
inline constexpr char kVerifyBackupRpc[] =
    "/cardvault.v1.BackupAdmin/VerifyBackup";
inline constexpr char kDeleteBackupRpc[] =
    "/cardvault.v1.BackupAdmin/DeleteBackup";

// A backup kept, with its manifest.
struct BackupSummary {
  storage::StoredBackup stored;
  BackupManifest manifest;
  bool manifest_ok = true;  // false: the manifest did not decode
};

struct BackupVerification {
  uint32_t id = 0;
  bool ok = false;
  std::vector<std::string> problems;  // never card data
  uint32_t files_checked = 0;
  uint64_t records_opened = 0;
  uint64_t records_total = 0;
  audit::ChainReport chain;
  BackupSummary backup;
  // Tokens deleted after the backup's head, per the live trail (-1: not
  // read).
  int64_t deletions_after = -1;
};

struct VerifyOptions {
  // Open every card record instead of a sample.
  bool all_records = false;
  // Records opened when not all: spread evenly over the table. Default 1000.
  uint64_t sample_records = 1000;
  // Direct-HSM mode: data keys stay in the HSM (as the vault runs).
  bool keys_in_hsm = false;
  // The audit retention the vault runs with (purged records must be older).
  absl::Duration audit_retention = absl::Hours(24 * 400);
  absl::Time now = absl::Now();
};

// Verifies backup `id` of `store` (see the header comment). The result says
// what failed; a status other than OK only for an unknown id (NOT_FOUND).
// `live_trail`, when given, is the vault's own trail, read to count the
// deletions a restore of the backup would undo.
absl::StatusOr<BackupVerification> VerifyBackup(
    const storage::BackupStore& store, uint32_t id,
    const hsm::KeyWrapper& wrapper, const VerifyOptions& options,
    const storage::AuditStore* live_trail = nullptr);

// The backups of `store` with their manifests, oldest first.
absl::StatusOr<std::vector<BackupSummary>> ListBackups(
    const storage::BackupStore& store);

class Backups {
 public:
  struct Options {
    // Scheduled backups this often; zero (the default) = only on demand.
    absl::Duration interval = absl::ZeroDuration();
    // After each backup, the oldest beyond this many are deleted. Default
    // 7; 0 = keep all.
    uint32_t keep = 7;
    VerifyOptions verify;
    // Nice value of the thread that takes backups (reads every record for
    // the manifest), so that a backup yields the CPU to the calls being
    // served. Default 10.
    int worker_nice = 10;
    std::function<absl::Time()> now = [] { return absl::Now(); };
  };
  struct Dependencies {
    storage::BackupStore* store = nullptr;
    const hsm::KeyWrapper* wrapper = nullptr;
    const auth::PolicyHolder* policy = nullptr;
    const commit::WritePath* audit = nullptr;
    // The live trail, for the deletions a restore would undo (may be null).
    const storage::AuditStore* live_trail = nullptr;
  };

  static absl::StatusOr<std::unique_ptr<Backups>> Create(Dependencies deps,
                                                         Options options);
  Backups(const Backups&) = delete;
  Backups& operator=(const Backups&) = delete;
  // Stops the schedule (a backup in progress finishes first).
  ~Backups();

  // Admin. Takes a backup now; UNAVAILABLE if one is being taken.
  absl::StatusOr<BackupSummary> Create(const auth::Caller& caller) const;
  // Admin.
  absl::StatusOr<std::vector<BackupSummary>> List(
      const auth::Caller& caller) const;
  // Admin. NOT_FOUND for an unknown id; UNAVAILABLE while another
  // verification runs.
  absl::StatusOr<BackupVerification> Verify(const auth::Caller& caller,
                                            uint32_t id,
                                            bool all_records) const;
  // Admin. NOT_FOUND for an unknown id.
  absl::Status Delete(const auth::Caller& caller, uint32_t id) const;

  // The backup the schedule would take now (also what Create runs).
  absl::StatusOr<BackupSummary> TakeBackup(absl::string_view by) const;

  // For metrics and alerts.
  uint64_t taken() const { return taken_.load(); }
  uint64_t failures() const { return failures_.load(); }
  // Unix seconds of the last backup taken (0: none since start).
  int64_t last_success_unix() const { return last_success_.load(); }

 private:
  Backups(Dependencies deps, Options options)
      : deps_(deps), options_(std::move(options)) {}
  absl::Status Record(const auth::Caller& caller, ::cardvault::v1::EventType,
                      absl::string_view rpc, absl::string_view detail,
                      const absl::Status& status) const;
  // Runs on worker_.
  absl::StatusOr<BackupSummary> TakeBackupNow(absl::string_view by) const;
  void ScheduleLoop();

  const Dependencies deps_;
  const Options options_;
  // Set for the whole of one backup.
  mutable std::atomic<bool> taking_{false};
  // Set for the whole of one verification.
  mutable std::atomic<bool> verifying_{false};
  // Shared by backups, lists and verifications; exclusive for deletions,
  // so that no backup is deleted while it is being read.
  mutable absl::Mutex mu_;
  mutable std::atomic<uint64_t> taken_{0};
  mutable std::atomic<uint64_t> failures_{0};
  mutable std::atomic<int64_t> last_success_{0};
  // One thread, at Options::worker_nice, takes every backup.
  std::unique_ptr<util::BlockingExecutor> worker_;
  absl::Notification stop_;
  std::thread scheduler_;
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_BACKUPS_H_
