// The manifest kept with every backup: what its consistent copy holds,
// computed from that copy (storage::BackupStore::Describe) before its files
// are kept, and checked again by verification.
//
// Stored bytes (the BackupEngine's application metadata of the backup):
//   offset  size  field
//   0       1     manifest format version, kBackupManifestFormatV1 = 0x01
//   1       N     cardvault.storage.v1.BackupManifest, deterministic
//                 protobuf encoding, N <= kMaxBackupManifestBytes
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
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "cardvault/storage/v1/backup_manifest.pb.h"
#include "server/storage/backup_store.h"

namespace cardvault::vault {

using BackupManifest = ::cardvault::storage::v1::BackupManifest;

inline constexpr uint8_t kBackupManifestFormatV1 = 0x01;
inline constexpr size_t kMaxBackupManifestBytes = 64 << 10;

std::string EncodeBackupManifest(const BackupManifest& manifest);
// DATA_LOSS for bytes that are not a manifest of a known format.
absl::StatusOr<BackupManifest> DecodeBackupManifest(absl::string_view bytes);

// Reads every table of `view` and describes it, as of `now`. Reads each
// record once; for 1 M tokens this takes about as long as a scan of them.
absl::StatusOr<BackupManifest> DescribeStore(const storage::StoreView& view,
                                             absl::Time now);

// The KEK generation a label names: "<stem>/<8 hex digits>" is that
// generation, any other label generation 1 (kek_manager.h).
uint32_t KekGenerationOf(absl::string_view label);

// Differences between two manifests' table digests, one line each (empty:
// the same data).
std::vector<std::string> CompareTableDigests(const BackupManifest& expected,
                                             const BackupManifest& actual);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_BACKUP_MANIFEST_H_
