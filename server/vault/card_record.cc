#include "server/vault/card_record.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "server/util/big_endian.h"
#include "server/vault/token.h"

namespace cardvault::vault {
namespace {

constexpr absl::string_view kAadLabel = "cardvault/card-record";

std::string AssociatedData(absl::string_view header, absl::string_view token) {
  std::string aad(kAadLabel);
  absl::StrAppend(&aad, header);
  aad.push_back(static_cast<char>(token.size()));
  absl::StrAppend(&aad, token);
  return aad;
}

bool IsKnownFormat(uint8_t f) {
  return f >= static_cast<uint8_t>(TokenFormat::kRandom) &&
         f <= static_cast<uint8_t>(TokenFormat::kBinLastFour);
}

absl::StatusOr<crypto::SecretBytes> EncodePlaintext(const Card& card) {
  const size_t n = card.pan.size();
  const size_t m = card.cardholder_name.size();
  if (n < kMinPanDigits || n > kMaxPanDigits || m > kMaxCardholderNameBytes ||
      card.exp_month > 12 || card.exp_year > 0xFFFF) {
    return absl::InvalidArgumentError("card is not valid for sealing");
  }
  crypto::SecretBytes out(1 + n + 1 + 2 + 1 + m);
  uint8_t* p = out.data();
  *p++ = static_cast<uint8_t>(n);
  std::memcpy(p, card.pan.data(), n);
  p += n;
  *p++ = static_cast<uint8_t>(card.exp_month);
  *p++ = static_cast<uint8_t>(card.exp_year >> 8);
  *p++ = static_cast<uint8_t>(card.exp_year);
  *p++ = static_cast<uint8_t>(m);
  if (m > 0) std::memcpy(p, card.cardholder_name.data(), m);
  return out;
}

absl::StatusOr<Card> DecodePlaintext(absl::string_view in) {
  const absl::Status bad = absl::DataLossError("card record is malformed");
  if (in.empty()) return bad;
  const size_t n = static_cast<uint8_t>(in[0]);
  if (n < kMinPanDigits || n > kMaxPanDigits || in.size() < 1 + n + 4) {
    return bad;
  }
  const size_t m = static_cast<uint8_t>(in[1 + n + 3]);
  if (m > kMaxCardholderNameBytes || in.size() != 1 + n + 4 + m) return bad;
  Card card;
  card.pan = crypto::SecretBytes(in.substr(1, n));
  card.exp_month = static_cast<uint8_t>(in[1 + n]);
  card.exp_year = util::ReadBigEndian16(in.substr(2 + n, 2));
  card.cardholder_name = crypto::SecretBytes(in.substr(5 + n, m));
  return card;
}

}  // namespace

absl::StatusOr<std::string> SealCardRecord(const crypto::Aead& key,
                                           const RecordHeader& header,
                                           absl::string_view token,
                                           const Card& card) {
  if (token.empty() || token.size() > 255) {
    return absl::InvalidArgumentError("token length out of range");
  }
  const std::string& domain = header.domain;
  if (domain.empty() || domain.size() > kMaxRecordDomainBytes) {
    return absl::InvalidArgumentError("token domain length out of range");
  }
  if (header.created < absl::UnixEpoch() || header.expires <= header.created) {
    return absl::InvalidArgumentError("record times out of range");
  }
  absl::StatusOr<crypto::SecretBytes> plaintext = EncodePlaintext(card);
  if (!plaintext.ok()) return plaintext.status();
  std::string record;
  record.reserve(kCardRecordHeaderBytes + domain.size() +
                 crypto::Aead::kOverhead + plaintext->size());
  record.push_back(static_cast<char>(kCardRecordFormatV3));
  util::AppendBigEndian32(header.key_version, &record);
  record.push_back(static_cast<char>(header.format));
  record.push_back(
      static_cast<char>(header.deterministic ? kRecordFlagDeterministic : 0));
  util::AppendUnixMillis(header.created, &record);
  util::AppendUnixMillis(header.expires, &record);
  record.push_back(static_cast<char>(domain.size()));
  absl::StrAppend(&record, domain);
  absl::StatusOr<std::string> sealed =
      key.Seal(plaintext->view(), AssociatedData(record, token));
  if (!sealed.ok()) return sealed.status();
  absl::StrAppend(&record, *sealed);
  return record;
}

absl::StatusOr<RecordHeader> ParseRecordHeader(absl::string_view record) {
  const absl::Status bad = absl::DataLossError("card record is malformed");
  if (record.size() < kCardRecordHeaderBytes + crypto::Aead::kOverhead ||
      record.size() > kMaxCardRecordBytes) {
    return bad;
  }
  if (static_cast<uint8_t>(record[0]) != kCardRecordFormatV3) {
    return absl::DataLossError("card record has an unknown format version");
  }
  const uint8_t format = static_cast<uint8_t>(record[5]);
  const uint8_t flags = static_cast<uint8_t>(record[6]);
  const size_t domain_len = static_cast<uint8_t>(record[23]);
  if (!IsKnownFormat(format) || (flags & ~kRecordFlagDeterministic) != 0 ||
      domain_len == 0 || domain_len > kMaxRecordDomainBytes ||
      record.size() <
          kCardRecordHeaderBytes + domain_len + crypto::Aead::kOverhead) {
    return bad;
  }
  RecordHeader header;
  header.key_version = util::ReadBigEndian32(record.substr(1, 4));
  header.format = static_cast<TokenFormat>(format);
  header.deterministic = (flags & kRecordFlagDeterministic) != 0;
  header.created = util::ReadUnixMillis(record.substr(7, 8), absl::UnixEpoch());
  header.expires =
      util::ReadUnixMillis(record.substr(15, 8), absl::InfiniteFuture());
  header.domain =
      std::string(record.substr(kCardRecordHeaderBytes, domain_len));
  return header;
}

absl::StatusOr<OpenedCard> OpenCardRecord(const KeyRing& keys,
                                          absl::string_view token,
                                          absl::string_view record) {
  if (token.size() > 255) {
    return absl::DataLossError("card record has an impossible length");
  }
  absl::StatusOr<RecordHeader> header = ParseRecordHeader(record);
  if (!header.ok()) return header.status();
  const size_t header_len = kCardRecordHeaderBytes + header->domain.size();
  absl::StatusOr<std::shared_ptr<const crypto::Aead>> key =
      keys.Get(header->key_version);
  if (!key.ok()) {
    return absl::DataLossError("card record names an unknown data key");
  }
  absl::StatusOr<crypto::SecretBytes> plaintext =
      (*key)->Open(record.substr(header_len),
                   AssociatedData(record.substr(0, header_len), token));
  if (absl::IsUnavailable(plaintext.status())) return plaintext.status();
  if (!plaintext.ok()) {
    return absl::DataLossError("card record failed its integrity check");
  }
  absl::StatusOr<Card> card = DecodePlaintext(plaintext->view());
  if (!card.ok()) return card.status();
  return OpenedCard{*std::move(card), *std::move(header)};
}

}  // namespace cardvault::vault
