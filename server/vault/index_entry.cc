#include "server/vault/index_entry.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "server/util/big_endian.h"
#include "server/vault/card_record.h"
#include "server/vault/cvv_holders.h"

namespace cardvault::vault {
namespace {

std::string LengthByte(absl::string_view s) {
  return std::string(1, static_cast<char>(s.size()));
}

}  // namespace

std::string PanIndexKey(const crypto::HmacSha256& key, absl::string_view domain,
                        TokenFormat format, absl::string_view pan) {
  const std::string format_byte(1, static_cast<char>(format));
  return key.ComputeSecret(
      {"cardvault/pan-index", LengthByte(domain), domain, format_byte, pan});
}

std::string IdempotencyKey(const crypto::HmacSha256& key,
                           absl::string_view identity,
                           absl::string_view idempotency_key) {
  return key.ComputeSecret({"cardvault/idempotency", LengthByte(identity),
                            identity, LengthByte(idempotency_key),
                            idempotency_key});
}

std::string Fingerprint(const crypto::HmacSha256& key, absl::string_view domain,
                        absl::string_view pan) {
  const std::string mac = key.ComputeSecret(
      {"cardvault/fingerprint", LengthByte(domain), domain, pan});
  return absl::StrCat("fp_",
                      absl::BytesToHexString(mac.substr(0, kFingerprintBytes)));
}

std::string EncodeIndexEntry(const IndexEntry& entry) {
  std::string out(1, static_cast<char>(kIndexEntryFormatV1));
  util::AppendUnixMillis(entry.expires, &out);
  absl::StrAppend(&out, entry.token);
  return out;
}

absl::StatusOr<IndexEntry> DecodeIndexEntry(absl::string_view value) {
  if (value.size() < 10 || value.size() > 9 + kMaxStoredTokenBytes ||
      static_cast<uint8_t>(value[0]) != kIndexEntryFormatV1) {
    return absl::DataLossError("PAN index entry is malformed");
  }
  return IndexEntry{
      std::string(value.substr(9)),
      util::ReadUnixMillis(value.substr(1, 8), absl::InfiniteFuture())};
}

std::string EncodeIdempotencyEntry(const IdempotencyEntry& entry) {
  std::string out(1, static_cast<char>(kIndexEntryFormatV1));
  util::AppendUnixMillis(entry.expires, &out);
  absl::StrAppend(&out, entry.request_digest, LengthByte(entry.domain),
                  entry.domain, entry.token);
  return out;
}

absl::StatusOr<IdempotencyEntry> DecodeIdempotencyEntry(
    absl::string_view value) {
  const absl::Status bad =
      absl::DataLossError("idempotency entry is malformed");
  constexpr size_t kFixed = 1 + 8 + crypto::HmacSha256::kMacSize + 1;
  if (value.size() < kFixed + 2 ||
      static_cast<uint8_t>(value[0]) != kIndexEntryFormatV1) {
    return bad;
  }
  const size_t d = static_cast<uint8_t>(value[kFixed - 1]);
  if (d == 0 || d > kMaxRecordDomainBytes || value.size() < kFixed + d + 1 ||
      value.size() > kFixed + d + kMaxStoredTokenBytes) {
    return bad;
  }
  IdempotencyEntry entry;
  entry.expires =
      util::ReadUnixMillis(value.substr(1, 8), absl::InfiniteFuture());
  entry.request_digest =
      std::string(value.substr(9, crypto::HmacSha256::kMacSize));
  entry.domain = std::string(value.substr(kFixed, d));
  entry.token = std::string(value.substr(kFixed + d));
  return entry;
}

absl::Time StoredExpiry(storage::Table table, absl::string_view key,
                        absl::string_view value) {
  switch (table) {
    case storage::Table::kTokens: {
      absl::StatusOr<RecordHeader> header = ParseRecordHeader(value);
      return header.ok() ? header->expires : absl::InfiniteFuture();
    }
    case storage::Table::kPanIndex: {
      absl::StatusOr<IndexEntry> entry = DecodeIndexEntry(value);
      return entry.ok() ? entry->expires : absl::InfiniteFuture();
    }
    case storage::Table::kIdempotency: {
      absl::StatusOr<IdempotencyEntry> entry = DecodeIdempotencyEntry(value);
      return entry.ok() ? entry->expires : absl::InfiniteFuture();
    }
    case storage::Table::kShared: {
      // Which node holds a CVV matters only while the CVV may be held;
      // other coordination rows are removed by their owners.
      if (!IsCvvHolderKey(key)) return absl::InfiniteFuture();
      absl::StatusOr<CvvHolder> holder = DecodeCvvHolder(value);
      return holder.ok() ? holder->expires : absl::InfiniteFuture();
    }
  }
  return absl::InfiniteFuture();
}

}  // namespace cardvault::vault
