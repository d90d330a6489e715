#include "server/vault/card_record.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "server/util/big_endian.h"
#include "server/vault/token.h"

namespace cardvault::vault {
namespace {

constexpr absl::string_view kAadLabel = "cardvault/card-record";

std::string AssociatedData(uint8_t format, uint32_t key_version,
                           absl::string_view token, absl::string_view domain) {
  std::string aad(kAadLabel);
  aad.push_back(static_cast<char>(format));
  util::AppendBigEndian32(key_version, &aad);
  aad.push_back(static_cast<char>(token.size()));
  absl::StrAppend(&aad, token);
  aad.push_back(static_cast<char>(domain.size()));
  absl::StrAppend(&aad, domain);
  return aad;
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

absl::StatusOr<std::string> SealCardRecord(const crypto::AesGcm& key,
                                           uint32_t key_version,
                                           absl::string_view token,
                                           absl::string_view domain,
                                           const Card& card) {
  if (token.empty() || token.size() > 255) {
    return absl::InvalidArgumentError("token length out of range");
  }
  if (domain.empty() || domain.size() > kMaxRecordDomainBytes) {
    return absl::InvalidArgumentError("token domain length out of range");
  }
  absl::StatusOr<crypto::SecretBytes> plaintext = EncodePlaintext(card);
  if (!plaintext.ok()) return plaintext.status();
  absl::StatusOr<std::string> sealed =
      key.Seal(plaintext->view(),
               AssociatedData(kCardRecordFormatV2, key_version, token, domain));
  if (!sealed.ok()) return sealed.status();
  std::string record;
  record.reserve(kCardRecordHeaderBytes + domain.size() + sealed->size());
  record.push_back(static_cast<char>(kCardRecordFormatV2));
  util::AppendBigEndian32(key_version, &record);
  record.push_back(static_cast<char>(domain.size()));
  absl::StrAppend(&record, domain, *sealed);
  return record;
}

absl::StatusOr<OpenedCard> OpenCardRecord(const KeyRing& keys,
                                          absl::string_view token,
                                          absl::string_view record) {
  if (record.size() < kCardRecordHeaderBytes + crypto::AesGcm::kOverhead ||
      record.size() > kMaxCardRecordBytes || token.size() > 255) {
    return absl::DataLossError("card record has an impossible length");
  }
  const uint8_t format = static_cast<uint8_t>(record[0]);
  if (format != kCardRecordFormatV2) {
    return absl::DataLossError("card record has an unknown format version");
  }
  const uint32_t key_version = util::ReadBigEndian32(record.substr(1, 4));
  const size_t domain_len = static_cast<uint8_t>(record[5]);
  if (domain_len == 0 || domain_len > kMaxRecordDomainBytes ||
      record.size() <
          kCardRecordHeaderBytes + domain_len + crypto::AesGcm::kOverhead) {
    return absl::DataLossError("card record has an impossible length");
  }
  const absl::string_view domain = record.substr(6, domain_len);
  absl::StatusOr<const crypto::AesGcm*> key = keys.Get(key_version);
  if (!key.ok()) {
    return absl::DataLossError("card record names an unknown data key");
  }
  absl::StatusOr<crypto::SecretBytes> plaintext =
      (*key)->Open(record.substr(kCardRecordHeaderBytes + domain_len),
                   AssociatedData(format, key_version, token, domain));
  if (!plaintext.ok()) {
    return absl::DataLossError("card record failed its integrity check");
  }
  absl::StatusOr<Card> card = DecodePlaintext(plaintext->view());
  if (!card.ok()) return card.status();
  return OpenedCard{*std::move(card), std::string(domain)};
}

}  // namespace cardvault::vault
