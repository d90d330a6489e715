#include "server/vault/restore.h"

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "server/storage/data_directory.h"
#include "server/util/big_endian.h"
#include "server/util/log.h"
#include "server/vault/kek_manager.h"
#include "server/vault/key_ring.h"
#include "server/vault/wrapped_keys.h"

namespace cardvault::vault {
namespace {

namespace v1 = ::cardvault::v1;

constexpr char kMarkerLabel[] = "cardvault/restore-marker";
constexpr size_t kMarkerHeaderBytes = 1 + 4 + 8;
constexpr size_t kMarkerMacBytes = 32;

std::string MarkerPath(const std::string& data_dir) {
  return data_dir + "/" + kRestoreMarkerFile;
}

// What the old trail holds after `head`: its last sequence and MAC, and the
// tokens deleted in it.
struct LostRecords {
  uint64_t through = 0;
  std::string head_mac;
  std::vector<std::string> deleted_tokens;
};

absl::StatusOr<LostRecords> ReadLost(const storage::StoreView& old,
                                     uint64_t head) {
  LostRecords lost;
  absl::StatusOr<std::optional<std::pair<uint64_t, std::string>>> last =
      old.audit().LastAuditRecord();
  if (!last.ok()) return last.status();
  if (!last->has_value() || (*last)->first <= head) return lost;
  lost.through = (*last)->first;
  absl::StatusOr<std::string> mac = audit::RecordMac((*last)->second);
  if (mac.ok()) lost.head_mac = *mac;
  absl::StatusOr<std::vector<std::string>> deleted =
      TokensDeletedAfter(old.audit(), head);
  if (!deleted.ok()) return deleted.status();
  lost.deleted_tokens = *std::move(deleted);
  return lost;
}

std::string UtcStamp(absl::Time t) {
  // Milliseconds: two restores in one second must not collide.
  return absl::FormatTime("%Y%m%dT%H%M%E3SZ", t, absl::UTCTimeZone());
}

}  // namespace

absl::StatusOr<std::vector<std::string>> TokensDeletedAfter(
    const storage::AuditStore& trail, uint64_t head) {
  std::vector<std::string> tokens;
  absl::Status scanned =
      trail.ScanAudit(head + 1, [&](uint64_t, absl::string_view record) {
        absl::StatusOr<audit::AuditEvent> e = audit::DecodeAuditEvent(record);
        if (e.ok() && e->event_type() == v1::DELETE_TOKEN &&
            e->status_code() == 0 &&
            absl::StartsWith(e->detail(), "deleted record")) {
          tokens.push_back(e->token());
        }
        return true;
      });
  if (!scanned.ok()) return scanned;
  return tokens;
}

bool RestorePending(const std::string& data_dir) {
  std::error_code ec;
  return std::filesystem::exists(MarkerPath(data_dir), ec);
}

absl::StatusOr<v1::RestoreRecord> RestoreFromBackup(
    const RestoreDependencies& deps, uint32_t backup_id,
    const RestoreOptions& options) {
  // "<data dir>/" + ".restoring" would be inside the data directory.
  std::string data_dir = options.data_dir;
  while (data_dir.size() > 1 && data_dir.back() == '/') data_dir.pop_back();
  if (absl::Status s = deps.check_not_in_use(data_dir); !s.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(s.message(), ": stop the vault before restoring"));
  }
  absl::StatusOr<storage::StoredBackup> stored = deps.backups->Get(backup_id);
  if (!stored.ok()) return stored.status();
  absl::StatusOr<BackupManifest> manifest =
      DecodeBackupManifest(stored->metadata);
  if (!manifest.ok()) return manifest.status();
  // The HSM first: without a KEK nothing of the backup can be opened.
  for (const auto& k : manifest->keks()) {
    absl::Status s = deps.wrapper->CheckKek(k.label());
    if (absl::IsNotFound(s)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "backup ", backup_id, " needs KEK \"", k.label(), "\" (generation ",
          k.generation(),
          ") and the HSM does not hold it: restore the HSM's keys first "
          "(docs/operations.md); nothing was changed"));
    }
    if (!s.ok()) return s;
  }
  absl::StatusOr<BackupVerification> verified =
      VerifyBackup(*deps.backups, backup_id, *deps.wrapper, options.verify);
  if (!verified.ok()) return verified.status();
  if (!verified->ok) {
    return absl::FailedPreconditionError(absl::StrCat(
        "backup ", backup_id, " does not verify (",
        absl::StrJoin(verified->problems, "; "), "); nothing was changed"));
  }

  v1::RestoreRecord record;
  record.set_backup_id(backup_id);
  record.mutable_backup_head()->set_sequence(manifest->audit_head_sequence());
  record.mutable_backup_head()->set_mac(manifest->audit_head_mac());
  record.set_lost_from(manifest->audit_head_sequence() + 1);
  std::vector<std::string> undone;
  std::error_code ec;
  if (std::filesystem::exists(data_dir + "/CURRENT", ec)) {
    absl::StatusOr<std::unique_ptr<storage::StoreView>> old =
        deps.open_read_only(data_dir);
    absl::StatusOr<LostRecords> lost =
        old.ok() ? ReadLost(**old, manifest->audit_head_sequence())
                 : absl::StatusOr<LostRecords>(old.status());
    if (lost.ok()) {
      if (lost->through == 0) {
        record.set_lost_from(0);  // nothing after the backup's head
      } else {
        record.set_lost_through(lost->through);
        record.set_lost_head_mac(lost->head_mac);
      }
      record.set_deletions_undone(lost->deleted_tokens.size());
      undone = std::move(lost->deleted_tokens);
    } else {
      util::LogError(
          absl::StrCat("the old data directory's trail cannot be read (",
                       lost.status().message(),
                       "): the restore record says its lost range is unknown"));
    }
  }

  // "<data dir>.restoring" is what the exchange swaps with the data
  // directory: after a crash between the exchange and the rename it holds
  // the OLD data directory, so it is never removed here. Only the copy in
  // "<data dir>.restoring.partial", which this function alone writes, is.
  const std::string restoring = data_dir + ".restoring";
  const std::string partial = restoring + ".partial";
  if (std::filesystem::exists(std::filesystem::symlink_status(restoring, ec))) {
    return absl::FailedPreconditionError(absl::StrCat(
        restoring,
        " exists: an earlier restore was interrupted. If the data directory "
        "holds a restore marker (",
        kRestoreMarkerFile, "), ", restoring,
        " is the data directory from before that restore: move it aside and "
        "keep it; otherwise it is an unused restored copy. Nothing was "
        "changed"));
  }
  if (RestorePending(data_dir)) {
    return absl::FailedPreconditionError(absl::StrCat(
        data_dir,
        " holds a restore that was never started: start the vault once so "
        "that it records that restore (and what it lost), then restore "
        "again; nothing was changed"));
  }
  const std::string aside =
      absl::StrCat(data_dir, ".before-restore-", UtcStamp(options.now));
  if (std::filesystem::exists(std::filesystem::symlink_status(aside, ec))) {
    return absl::FailedPreconditionError(
        absl::StrCat(aside, " exists; nothing was changed"));
  }
  std::filesystem::remove_all(partial, ec);  // a crashed restore's copy
  if (absl::Status s = deps.backups->RestoreTo(backup_id, partial); !s.ok()) {
    return s;
  }
  // The marker is authenticated under the backup's own audit key.
  absl::StatusOr<MacKey> audit_key;
  {
    absl::StatusOr<std::unique_ptr<storage::StoreView>> copy =
        deps.open_read_only(partial);
    if (!copy.ok()) return copy.status();
    absl::StatusOr<std::unique_ptr<KekManager>> kek =
        KekManager::OpenReadOnly(&(*copy)->keys(), deps.wrapper, {});
    if (!kek.ok()) return kek.status();
    audit_key = LoadMacKey(kek->get(), kAuditKeyPrefix, false);
    if (!audit_key.ok()) return audit_key.status();
  }
  if (std::filesystem::exists(data_dir, ec)) {
    record.set_previous_data_dir(aside);
  }
  std::string marker(1, static_cast<char>(kRestoreMarkerFormatV1));
  util::AppendBigEndian32(audit_key->version, &marker);
  util::AppendUnixMillis(options.now, &marker);
  const std::string body = audit::SerializeDeterministic(record);
  marker.append(
      audit_key->mac->Compute(absl::StrCat(kMarkerLabel, marker, body)));
  marker.append(body);
  if (absl::Status s = storage::WriteFileDurably(MarkerPath(partial), marker);
      !s.ok()) {
    return s;
  }
  // Written before the exchange, at a path known now: a crash after it
  // must not lose the list.
  if (!undone.empty()) {
    if (absl::Status s = storage::WriteFileDurably(
            aside + ".deletions-undone", absl::StrJoin(undone, "\n") + "\n");
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = storage::RenameDurably(partial, restoring); !s.ok()) {
    return s;
  }
  absl::StatusOr<std::string> moved =
      storage::SwapInDirectory(restoring, data_dir, aside);
  if (!moved.ok()) return moved.status();
  return record;
}

absl::StatusOr<std::optional<v1::RestoreRecord>> ReadRestoreMarker(
    const std::string& data_dir, const crypto::HmacSha256& audit_key,
    uint32_t audit_key_version) {
  absl::StatusOr<std::string> marker = storage::ReadSmallFile(
      MarkerPath(data_dir),
      kMarkerHeaderBytes + kMarkerMacBytes + kMaxRestoreMarkerBytes);
  if (absl::IsNotFound(marker.status())) return std::nullopt;
  if (!marker.ok()) return marker.status();
  const absl::string_view m = *marker;
  v1::RestoreRecord record;
  if (m.size() < kMarkerHeaderBytes + kMarkerMacBytes ||
      static_cast<uint8_t>(m[0]) != kRestoreMarkerFormatV1 ||
      util::ReadBigEndian32(m.substr(1, 4)) != audit_key_version ||
      !audit_key.Verify(
          absl::StrCat(kMarkerLabel, m.substr(0, kMarkerHeaderBytes),
                       m.substr(kMarkerHeaderBytes + kMarkerMacBytes)),
          m.substr(kMarkerHeaderBytes, kMarkerMacBytes)) ||
      !record.ParseFromArray(
          m.data() + kMarkerHeaderBytes + kMarkerMacBytes,
          static_cast<int>(m.size() - kMarkerHeaderBytes - kMarkerMacBytes))) {
    return absl::DataLossError(
        absl::StrCat("the restore marker ", MarkerPath(data_dir),
                     " does not verify under the audit key: not starting"));
  }
  return record;
}

absl::Status RecordRestore(const std::string& data_dir,
                           const v1::RestoreRecord& record,
                           const commit::WritePath& log,
                           const storage::AuditStore& store, absl::Time now) {
  // A crash after the append and before the removal repeats this: the
  // RESTORE event is then already where it goes (after the lost range, or
  // after the backup's head when the range is unknown).
  bool appended = false;
  for (uint64_t at :
       {record.lost_through() + 1, record.backup_head().sequence() + 1}) {
    if (at <= 1 || appended) continue;
    absl::Status scanned =
        store.ScanAudit(at, [&](uint64_t sequence, absl::string_view stored) {
          absl::StatusOr<audit::AuditEvent> e = audit::DecodeAuditEvent(stored);
          appended = sequence == at && e.ok() &&
                     e->event_type() == v1::RESTORE &&
                     audit::SerializeDeterministic(e->restore()) ==
                         audit::SerializeDeterministic(record);
          return false;
        });
    if (!scanned.ok()) return scanned;
  }
  if (!appended) {
    // Otherwise the trail must end where the backup did: a marker from
    // another restore (replayed, or left in a directory moved back) must
    // not be recorded against this trail.
    absl::StatusOr<std::optional<std::pair<uint64_t, std::string>>> last =
        store.LastAuditRecord();
    if (!last.ok()) return last.status();
    absl::StatusOr<std::string> mac =
        last->has_value() ? audit::RecordMac((*last)->second)
                          : absl::StatusOr<std::string>(std::string());
    if (!mac.ok() || !last->has_value() ||
        (*last)->first != record.backup_head().sequence() ||
        *mac != record.backup_head().mac()) {
      return absl::DataLossError(
          absl::StrCat("the restore marker names backup ", record.backup_id(),
                       " with audit head ", record.backup_head().sequence(),
                       ", and the trail does not end there: not starting"));
    }
  }
  if (!appended) {
    audit::AuditEvent event = audit::ServerEvent(v1::RESTORE, now);
    *event.mutable_restore() = record;
    event.set_detail(absl::StrCat(
        "restored backup ", record.backup_id(), " (audit head ",
        record.backup_head().sequence(),
        " mac=", absl::BytesToHexString(record.backup_head().mac()), "); lost ",
        record.lost_through() > 0
            ? absl::StrCat("records ", record.lost_from(), "..",
                           record.lost_through())
            : (record.lost_from() == 0 ? std::string("no records")
                                       : std::string("an unknown range")),
        "; ", record.deletions_undone(), " deletions undone"));
    if (absl::Status s = log.Append(std::move(event)); !s.ok()) return s;
  }
  util::LogInfo(absl::StrCat("restore of backup ", record.backup_id(),
                             " recorded in the audit trail"));
  return storage::RemoveFileDurably(MarkerPath(data_dir));
}

}  // namespace cardvault::vault
