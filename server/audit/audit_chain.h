// The tamper-evident audit trail: an append-only chain of records, each
// carrying an HMAC-SHA256 over its content and its predecessor's MAC, under
// an audit key that exists outside the HSM only in locked memory (it is
// stored wrapped under the KEK). Rebuilding or editing the chain without that
// key is detected by VerifyStoredChain. This module builds, chains and
// verifies records; server/commit/write_path.h writes them.
//
// Record (stored under its sequence; storage/rocksdb_storage.h and
// storage/postgres_store.h say where):
//   offset  size  field
//   0       1     record format version, kAuditRecordFormatV1 = 0x01
//   1       4     audit key version, uint32 big-endian
//   5       32    chain MAC
//   37      N     event: cardvault.v1.AuditEvent, deterministic protobuf
//                 encoding, N <= kMaxAuditEventBytes; its `sequence` equals
//                 the record's key. A batch call is one event listing its
//                 items (AppendAsync).
// chain MAC = HMAC-SHA256(audit key, "cardvault/audit-record" || format
//             version (1) || key version (4) || sequence (8, BE) ||
//             previous record's chain MAC (32; zeros for sequence 1) || event)
//
// Restore: the records a restore lost (after the restored backup's head) are
// never numbered again. The RESTORE event takes the sequence after the last
// lost one and is chained to the backup's head; Verify accepts that one gap
// because the event names it (lost_from, lost_through, backup head).
//
// Retention: records older than the retention period (default 400 days, PCI
// DSS 10.5.1) may be purged, oldest first, never the newest. The purge
// replaces them with an anchor (key: sequence 0) so that the chain still
// verifies from the first record kept:
//   offset  size  field
//   0       1     anchor format version, kAuditAnchorFormatV1 = 0x01
//   1       4     audit key version, uint32 big-endian
//   5       8     sequence N of the last purged record, big-endian
//   13      8     event time of record N, Unix milliseconds, big-endian
//   21      32    chain MAC of record N
//   53      32    HMAC-SHA256(audit key, "cardvault/audit-anchor" || [0, 53))
// Verify refuses an anchor whose record N is younger than the retention
// period: records cannot be purged early, even by someone with file access.
//
// Thread safety: the free functions are thread-safe; see ChainBuilder.
#ifndef CARDVAULT_SERVER_AUDIT_AUDIT_CHAIN_H_
#define CARDVAULT_SERVER_AUDIT_AUDIT_CHAIN_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "cardvault/v1/audit.pb.h"
#include "server/crypto/hmac_sha256.h"
#include "server/storage/token_store.h"

namespace cardvault::audit {

using AuditEvent = ::cardvault::v1::AuditEvent;
using BatchItem = ::cardvault::v1::BatchItem;

// The identity recorded for what the server does on its own.
inline constexpr absl::string_view kServerIdentity = "cardvaultd";

// Writes `t`, to the millisecond, into an event's timestamp.
void SetEventTime(absl::Time t, google::protobuf::Timestamp* out);

// The time an event's timestamp holds.
absl::Time EventTime(const google::protobuf::Timestamp& t);

// An event of `type` done by the server itself at `now`.
AuditEvent ServerEvent(::cardvault::v1::EventType type, absl::Time now);

inline constexpr uint8_t kAuditRecordFormatV1 = 0x01;
inline constexpr size_t kAuditRecordHeaderBytes = 1 + 4 + 32;
// Bounds an event, a batch call's included: tokens.max_batch_items (at most
// 10,000) items of at most a few hundred bytes each.
inline constexpr size_t kMaxAuditEventBytes = 4 << 20;
inline constexpr uint8_t kAuditAnchorFormatV1 = 0x01;
inline constexpr size_t kAuditAnchorBytes = 1 + 4 + 8 + 8 + 32 + 32;

// A chain position exported to compare against later.
struct Checkpoint {
  uint64_t sequence = 0;
  std::string mac;
};

// A restore from a backup, as the chain records it (RESTORE event).
struct RestoreMark {
  uint64_t sequence = 0;
  absl::Time time;
  ::cardvault::v1::RestoreRecord restore;
};

// Result of a chain verification.
struct ChainReport {
  bool intact = true;
  uint64_t first_bad_sequence = 0;  // 0 when intact
  std::string problem;
  uint64_t records_checked = 0;
  uint64_t head_sequence = 0;  // last record that verified
  std::string head_mac;
  // Restores the chain records, oldest first.
  std::vector<RestoreMark> restores;
  // The RESTORE event whose lost range holds the checkpoint asked about,
  // when a restore (not truncation) is why the chain no longer holds it.
  // Only a known range (lost_through set) excuses a checkpoint: records
  // written after a restore reuse the sequences from lost_from on.
  uint64_t checkpoint_lost_in_restore = 0;
};

// Builds the records of one chain under one audit key: each record's MAC
// covers its predecessor's. Not thread-safe: one builder per commit.
class ChainBuilder {
 public:
  // `key` must outlive the builder.
  ChainBuilder(const crypto::HmacSha256* key, uint32_t key_version)
      : key_(key), key_version_(key_version) {}

  // The next record follows the one at `sequence` with chain MAC `mac` (0
  // and any MAC: an empty chain), and takes a sequence after `floor` (the
  // last one a restore lost) too.
  void StartAfter(uint64_t sequence, absl::string_view mac, uint64_t floor);

  // Chains `event` as the next record, setting its sequence; nullopt (and
  // nothing changed) if it is larger than kMaxAuditEventBytes.
  std::optional<std::pair<uint64_t, std::string>> Chain(AuditEvent& event);

  // The last record chained (or started after).
  uint64_t head_sequence() const { return next_ - 1; }
  const std::string& head_mac() const { return mac_; }

 private:
  const crypto::HmacSha256* const key_;
  const uint32_t key_version_;
  uint64_t next_ = 1;
  std::string mac_;
};

// The retention anchor (format above) after purging records 1..`through`,
// whose last has event time `time_ms` and chain MAC `mac`.
std::string MakeAnchor(const crypto::HmacSha256& key, uint32_t key_version,
                       uint64_t through, int64_t time_ms,
                       absl::string_view mac);

// The event time of a stored record, Unix milliseconds, and its chain MAC;
// DATA_LOSS if it does not decode.
absl::StatusOr<std::pair<int64_t, std::string>> RecordTimeAndMac(
    absl::string_view record);

// Verifies the chain stored in `store` under `key` (WritePath::Verify, for a
// store no log writes to, such as a backup's): records purged by retention
// must be older than `now - retention`.
absl::StatusOr<ChainReport> VerifyStoredChain(
    const storage::AuditStore& store, const crypto::HmacSha256& key,
    uint32_t key_version, absl::Duration retention, absl::Time now,
    const std::optional<Checkpoint>& checkpoint = std::nullopt);

// `message` in deterministic protobuf encoding (map entries sorted), the
// form every stored and MAC'd message takes.
std::string SerializeDeterministic(const google::protobuf::Message& message);

// The chain MAC a stored record carries; DATA_LOSS if malformed.
absl::StatusOr<std::string> RecordMac(absl::string_view record);
// The audit key version a stored record names; DATA_LOSS if malformed.
absl::StatusOr<uint32_t> RecordKeyVersion(absl::string_view record);

// Decodes a stored record's event without verifying its MAC.
absl::StatusOr<AuditEvent> DecodeAuditEvent(absl::string_view record);

}  // namespace cardvault::audit

#endif  // CARDVAULT_SERVER_AUDIT_AUDIT_CHAIN_H_
