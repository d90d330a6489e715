// Restore of the vault from a backup, with the vault stopped, and the
// RESTORE audit record its first start appends.
//
// RestoreFromBackup:
//   1. refuses while a cardvaultd has the data directory open;
//   2. refuses, naming the label, when the HSM lacks a KEK the backup's
//      manifest lists, and when the backup does not verify (backups.h);
//      nothing on disk has changed then;
//   3. reads what the old data directory's trail holds after the backup's
//      head (the range the restore loses, and the DeleteToken calls in it
//      whose deletions it undoes), if it is still readable;
//   4. writes the backup into "<data dir>.restoring.partial" (a crashed
//      restore's partial copy there is removed first), with the restore
//      marker below in it, renames it to "<data dir>.restoring", and
//      exchanges that atomically with the data directory; the old one is
//      moved to "<data dir>.before-restore-<UTC time>", never deleted.
//      Refused, with nothing changed, when "<data dir>.restoring" exists:
//      after a crash between the exchange and the rename it IS the old data
//      directory. Tokens whose deletion was undone are listed,
//      one per line, in "<that directory>.deletions-undone".
// The first start then appends the RESTORE event (before anything else is
// recorded) and removes the marker (ReadRestoreMarker, RecordRestore).
//
// Restore marker (file kRestoreMarkerFile in the data directory):
//   offset  size  field
//   0       1     format version, kRestoreMarkerFormatV1 = 0x01
//   1       4     audit key version, uint32 big-endian
//   5       8     restore time, Unix milliseconds, big-endian
//   13      32    HMAC-SHA256(audit key, "cardvault/restore-marker" ||
//                 [0, 13) || record)
//   45      N     cardvault.v1.RestoreRecord, deterministic encoding,
//                 N <= kMaxRestoreMarkerBytes
// The MAC keeps anyone without the audit key from planting a restore that
// would excuse a truncated trail.
//
// Thread safety: functions only.
#ifndef CARDVAULT_SERVER_VAULT_RESTORE_H_
#define CARDVAULT_SERVER_VAULT_RESTORE_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cardvault/v1/audit.pb.h"
#include "hsm/key_wrapper.h"
#include "server/commit/write_path.h"
#include "server/crypto/hmac_sha256.h"
#include "server/storage/backup_store.h"
#include "server/vault/backups.h"

namespace cardvault::vault {

inline constexpr char kRestoreMarkerFile[] = "RESTORE-PENDING";
inline constexpr uint8_t kRestoreMarkerFormatV1 = 0x01;
inline constexpr size_t kMaxRestoreMarkerBytes = 4096;

struct RestoreDependencies {
  const storage::BackupStore* backups = nullptr;
  const hsm::KeyWrapper* wrapper = nullptr;
  // Opens a (stopped) vault's store in `dir` read-only.
  std::function<absl::StatusOr<std::unique_ptr<storage::StoreView>>(
      const std::string& dir)>
      open_read_only;
  // OK when no running vault holds `dir`.
  std::function<absl::Status(const std::string& dir)> check_not_in_use;
};

struct RestoreOptions {
  std::string data_dir;
  VerifyOptions verify;
  absl::Time now = absl::Now();
};

// See the header comment. The record the first start will append.
absl::StatusOr<::cardvault::v1::RestoreRecord> RestoreFromBackup(
    const RestoreDependencies& deps, uint32_t backup_id,
    const RestoreOptions& options);

// The tokens `trail` records as deleted (DeleteToken calls that removed a
// record) after sequence `head`: what a restore of a backup with that head
// brings back.
absl::StatusOr<std::vector<std::string>> TokensDeletedAfter(
    const storage::AuditStore& trail, uint64_t head);

// Whether `data_dir` holds a restore marker (its first start after a
// restore): the KEK manager then rolls forward to newer KEKs.
bool RestorePending(const std::string& data_dir);

// The restore a marker in `data_dir` describes; nullopt without a marker.
// DATA_LOSS when the marker does not verify under `audit_key`: the vault
// must not start.
absl::StatusOr<std::optional<::cardvault::v1::RestoreRecord>> ReadRestoreMarker(
    const std::string& data_dir, const crypto::HmacSha256& audit_key,
    uint32_t audit_key_version);

// Appends the RESTORE event of `record` (once, even if a crash repeats this)
// and removes the marker from `data_dir`.
absl::Status RecordRestore(const std::string& data_dir,
                           const ::cardvault::v1::RestoreRecord& record,
                           const commit::WritePath& log,
                           const storage::AuditStore& store, absl::Time now);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_RESTORE_H_
