#include "server/audit/audit_chain.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "server/util/big_endian.h"
#include "server/util/log.h"

namespace cardvault::audit {

absl::Time EventTime(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

void SetEventTime(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t ms = absl::ToUnixMillis(t);
  out->set_seconds(ms / 1000);
  out->set_nanos(static_cast<int32_t>((ms % 1000) * 1000000));
}

AuditEvent ServerEvent(::cardvault::v1::EventType type, absl::Time now) {
  AuditEvent event;
  SetEventTime(now, event.mutable_event_time());
  event.set_event_type(type);
  event.set_identity(std::string(kServerIdentity));
  return event;
}
namespace {

constexpr absl::string_view kMacLabel = "cardvault/audit-record";
const std::string kZeroMac(crypto::HmacSha256::kMacSize, '\0');

struct ParsedRecord {
  uint32_t key_version;
  absl::string_view mac;
  absl::string_view event_bytes;
};

absl::StatusOr<ParsedRecord> ParseRecord(absl::string_view record) {
  if (record.size() < kAuditRecordHeaderBytes ||
      record.size() > kAuditRecordHeaderBytes + kMaxAuditEventBytes ||
      static_cast<uint8_t>(record[0]) != kAuditRecordFormatV1) {
    return absl::DataLossError("audit record has a bad format or length");
  }
  return ParsedRecord{util::ReadBigEndian32(record.substr(1, 4)),
                      record.substr(5, crypto::HmacSha256::kMacSize),
                      record.substr(kAuditRecordHeaderBytes)};
}

// The bytes the chain MAC of a record covers (layout in the header).
std::string ChainInput(uint32_t key_version, uint64_t sequence,
                       absl::string_view previous_mac,
                       absl::string_view event_bytes) {
  std::string input(kMacLabel);
  input.push_back(static_cast<char>(kAuditRecordFormatV1));
  util::AppendBigEndian32(key_version, &input);
  util::AppendBigEndian64(sequence, &input);
  absl::StrAppend(&input, previous_mac, event_bytes);
  return input;
}

constexpr absl::string_view kAnchorLabel = "cardvault/audit-anchor";

struct Anchor {
  uint32_t key_version;
  uint64_t sequence;
  int64_t time_ms;
  std::string mac;
};

}  // namespace

absl::StatusOr<AuditEvent> DecodeAuditEvent(absl::string_view record) {
  absl::StatusOr<ParsedRecord> parsed = ParseRecord(record);
  if (!parsed.ok()) return parsed.status();
  AuditEvent event;
  if (!event.ParseFromArray(parsed->event_bytes.data(),
                            static_cast<int>(parsed->event_bytes.size()))) {
    return absl::DataLossError("audit event does not decode");
  }
  return event;
}

std::string SerializeDeterministic(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::io::StringOutputStream stream(&out);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  message.SerializeToCodedStream(&coded);
  coded.Trim();
  return out;
}

absl::StatusOr<std::string> RecordMac(absl::string_view record) {
  absl::StatusOr<ParsedRecord> parsed = ParseRecord(record);
  if (!parsed.ok()) return parsed.status();
  return std::string(parsed->mac);
}

absl::StatusOr<uint32_t> RecordKeyVersion(absl::string_view record) {
  absl::StatusOr<ParsedRecord> parsed = ParseRecord(record);
  if (!parsed.ok()) return parsed.status();
  return parsed->key_version;
}

void ChainBuilder::StartAfter(uint64_t sequence, absl::string_view mac,
                              uint64_t floor) {
  next_ = std::max(sequence, floor) + 1;
  mac_ = sequence == 0 ? kZeroMac : std::string(mac);
}

std::optional<std::pair<uint64_t, std::string>> ChainBuilder::Chain(
    AuditEvent& event) {
  event.set_sequence(next_);
  const std::string event_bytes = SerializeDeterministic(event);
  if (event_bytes.size() > kMaxAuditEventBytes) return std::nullopt;
  mac_ = key_->Compute(ChainInput(key_version_, next_, mac_, event_bytes));
  std::string record;
  record.reserve(kAuditRecordHeaderBytes + event_bytes.size());
  record.push_back(static_cast<char>(kAuditRecordFormatV1));
  util::AppendBigEndian32(key_version_, &record);
  absl::StrAppend(&record, mac_, event_bytes);
  return std::make_pair(next_++, std::move(record));
}

std::string MakeAnchor(const crypto::HmacSha256& key, uint32_t key_version,
                       uint64_t through, int64_t time_ms,
                       absl::string_view mac) {
  std::string anchor;
  anchor.push_back(static_cast<char>(kAuditAnchorFormatV1));
  util::AppendBigEndian32(key_version, &anchor);
  util::AppendBigEndian64(through, &anchor);
  util::AppendBigEndian64(static_cast<uint64_t>(time_ms), &anchor);
  absl::StrAppend(&anchor, mac);
  absl::StrAppend(&anchor, key.Compute(absl::StrCat(kAnchorLabel, anchor)));
  return anchor;
}

absl::StatusOr<std::pair<int64_t, std::string>> RecordTimeAndMac(
    absl::string_view record) {
  absl::StatusOr<ParsedRecord> parsed = ParseRecord(record);
  if (!parsed.ok()) return parsed.status();
  absl::StatusOr<AuditEvent> event = DecodeAuditEvent(record);
  if (!event.ok()) return event.status();
  const int64_t ms = event->event_time().seconds() * 1000 +
                     event->event_time().nanos() / 1000000;
  return std::make_pair(ms, std::string(parsed->mac));
}

absl::StatusOr<ChainReport> VerifyStoredChain(
    const storage::AuditStore& store, const crypto::HmacSha256& key,
    uint32_t key_version, absl::Duration retention, absl::Time now,
    const std::optional<Checkpoint>& checkpoint) {
  const storage::AuditStore* store_ = &store;
  const crypto::HmacSha256* key_ = &key;
  const uint32_t key_version_ = key_version;
  ChainReport report;
  std::string previous = kZeroMac;
  std::string checkpoint_mac;
  uint64_t expected = 1;
  absl::StatusOr<std::optional<std::string>> anchor = store_->AuditAnchor();
  if (!anchor.ok()) return anchor.status();
  if (anchor->has_value()) {
    const std::string& a = **anchor;
    if (a.size() != kAuditAnchorBytes ||
        static_cast<uint8_t>(a[0]) != kAuditAnchorFormatV1 ||
        !key_->Verify(absl::StrCat(kAnchorLabel, a.substr(0, 53)),
                      a.substr(53))) {
      report.intact = false;
      report.first_bad_sequence = 1;
      report.problem = "retention anchor does not verify";
      return report;
    }
    const uint64_t sequence = util::ReadBigEndian64(a.substr(5, 8));
    const int64_t time_ms =
        static_cast<int64_t>(util::ReadBigEndian64(a.substr(13, 8)));
    if (absl::FromUnixMillis(time_ms) > now - retention) {
      report.intact = false;
      report.first_bad_sequence = 1;
      report.problem = "records were purged before the retention period ended";
      return report;
    }
    expected = sequence + 1;
    previous = a.substr(21, 32);
  }
  auto fail = [&](uint64_t sequence, absl::string_view problem) {
    report.intact = false;
    report.first_bad_sequence = sequence;
    report.problem = std::string(problem);
    return false;
  };
  absl::Status scanned = store_->ScanAudit(1, [&](uint64_t sequence,
                                                  absl::string_view record) {
    absl::StatusOr<ParsedRecord> parsed = ParseRecord(record);
    if (sequence != expected) {
      // The one gap a chain may have: the range a restore lost, skipped by
      // the RESTORE event that follows it (its MAC, checked below, covers
      // its sequence and links it to the backup's head).
      AuditEvent restore;
      const bool skipped =
          parsed.ok() &&
          restore.ParseFromArray(
              parsed->event_bytes.data(),
              static_cast<int>(parsed->event_bytes.size())) &&
          restore.event_type() == v1::RESTORE &&
          restore.restore().lost_from() == expected &&
          restore.restore().lost_through() + 1 == sequence &&
          restore.restore().backup_head().sequence() + 1 == expected &&
          restore.restore().backup_head().mac() == previous;
      if (!skipped) {
        return fail(expected,
                    absl::StrCat("record ", expected, " is missing (next is ",
                                 sequence, ")"));
      }
      expected = sequence;
    }
    if (!parsed.ok()) return fail(sequence, parsed.status().message());
    if (parsed->key_version != key_version_) {
      return fail(sequence, "record names an unknown audit key");
    }
    if (!key_->Verify(ChainInput(parsed->key_version, sequence, previous,
                                 parsed->event_bytes),
                      parsed->mac)) {
      return fail(sequence, "chain MAC does not verify");
    }
    AuditEvent event;
    if (!event.ParseFromArray(parsed->event_bytes.data(),
                              static_cast<int>(parsed->event_bytes.size())) ||
        event.sequence() != sequence) {
      return fail(sequence, "event does not decode to its own sequence");
    }
    previous = std::string(parsed->mac);
    if (event.event_type() == v1::RESTORE) {
      report.restores.push_back({.sequence = sequence,
                                 .time = EventTime(event.event_time()),
                                 .restore = event.restore()});
    }
    if (checkpoint.has_value() && sequence == checkpoint->sequence) {
      checkpoint_mac = previous;
    }
    report.records_checked++;
    report.head_sequence = sequence;
    report.head_mac = previous;
    ++expected;
    return true;
  });
  if (!scanned.ok()) return scanned;
  if (report.intact && checkpoint.has_value() && checkpoint->sequence > 0 &&
      checkpoint_mac != checkpoint->mac) {
    // A restore from a backup replaced the records after the backup's head;
    // a checkpoint exported before it may lie in what it lost. That is
    // reported as the restore, not as truncation. Only when the restore
    // knew what it lost: the records written after a restore take the
    // sequences from its lost_from on, so an unknown (unbounded) range would
    // excuse every later checkpoint cut off by truncation.
    for (const RestoreMark& r : report.restores) {
      const uint64_t from = r.restore.lost_from();
      const uint64_t through = r.restore.lost_through();
      if (checkpoint->sequence >= from && from > 0 && through > 0 &&
          checkpoint->sequence <= through &&
          (checkpoint->sequence != through ||
           r.restore.lost_head_mac().empty() ||
           r.restore.lost_head_mac() == checkpoint->mac)) {
        report.checkpoint_lost_in_restore = r.sequence;
        break;
      }
    }
  }
  if (report.intact && checkpoint.has_value() && checkpoint->sequence > 0 &&
      report.checkpoint_lost_in_restore == 0) {
    if (checkpoint->sequence > report.head_sequence) {
      report.intact = false;
      report.first_bad_sequence = report.head_sequence + 1;
      report.problem = absl::StrCat("chain ends at ", report.head_sequence,
                                    " before checkpoint ", checkpoint->sequence,
                                    " (truncated)");
    } else if (checkpoint_mac != checkpoint->mac) {
      report.intact = false;
      report.first_bad_sequence = checkpoint->sequence;
      report.problem = "record differs from the checkpoint";
    }
    for (const RestoreMark& r : report.restores) {
      if (!report.intact && r.restore.lost_from() > 0 &&
          r.restore.lost_through() == 0 &&
          checkpoint->sequence >= r.restore.lost_from()) {
        absl::StrAppend(&report.problem, "; or lost in the restore at ",
                        r.sequence, ", whose lost range (from ",
                        r.restore.lost_from(), ") is unknown");
      }
    }
  }
  return report;
}

}  // namespace cardvault::audit
