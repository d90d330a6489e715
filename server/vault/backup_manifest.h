// The manifest kept with every backup: what its consistent copy holds,
// computed from that copy (storage::BackupStore::Describe) before its files
// are kept, and checked again by verification.
//
// Stored bytes (the BackupEngine's application metadata of the backup):
//   offset  size  field
//   0       1     manifest format version, kBackupManifestFormatV1 = 0x01
//   1       32    HMAC-SHA256(audit key, "cardvault/backup-manifest" ||
//                 the manifest bytes below)
//   33      N     cardvault.storage.v1.BackupManifest, deterministic
//                 protobuf encoding, N <= kMaxBackupManifestBytes
// The MAC, under the audit key the backup itself holds (wrapped), keeps
// someone with write access to the backup directory from editing the
// manifest to match swapped or dropped files.
// (proto/cardvault/storage/v1/backup_manifest.proto: time, audit chain first
// and head sequence and head MAC, KEK generation and every KEK label its
// wrapped keys name, live and destroyed data-key versions, and per table the
// record count, bytes and a SHA-256 over every key and value.) It never
// holds key material, card data or tokens.
//
// Thread safety: functions only.
#ifndef CARDVAULT_SERVER_VAULT_BACKUP_MANIFEST_H_
#define CARDVAULT_SERVER_VAULT_BACKUP_MANIFEST_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "cardvault/storage/v1/backup_manifest.pb.h"
#include "server/crypto/hmac_sha256.h"
#include "server/storage/backup_store.h"

namespace cardvault::vault {

using BackupManifest = ::cardvault::storage::v1::BackupManifest;

inline constexpr uint8_t kBackupManifestFormatV1 = 0x01;
inline constexpr size_t kMaxBackupManifestBytes = 64 << 10;

inline constexpr absl::string_view kBackupManifestMacLabel =
    "cardvault/backup-manifest";

// `authenticate(data)` is the audit key's MAC of `data`.
std::string EncodeBackupManifest(
    const BackupManifest& manifest,
    const std::function<std::string(absl::string_view)>& authenticate);
// DATA_LOSS for bytes that are not a manifest of a known format. The MAC is
// not checked here (VerifyBackupManifestMac).
absl::StatusOr<BackupManifest> DecodeBackupManifest(absl::string_view bytes);
// Whether the manifest bytes carry a MAC `key` made.
bool VerifyBackupManifestMac(absl::string_view bytes,
                             const crypto::HmacSha256& key);

// Reads every table of `view` and describes it, as of `now`. Reads each
// record once; for 1 M tokens this takes about as long as a scan of them.
absl::StatusOr<BackupManifest> DescribeStore(const storage::StoreView& view,
                                             absl::Time now);

// Differences between two manifests' table digests, one line each (empty:
// the same data).
std::vector<std::string> CompareTableDigests(const BackupManifest& expected,
                                             const BackupManifest& actual);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_BACKUP_MANIFEST_H_
