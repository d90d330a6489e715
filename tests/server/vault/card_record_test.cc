#include "server/vault/card_record.h"

#include <map>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/util/big_endian.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::vault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;

constexpr char kToken[] = "tok_abcdefghijklmnopqrstuvwxya";
constexpr char kOtherToken[] = "tok_bbcdefghijklmnopqrstuvwxya";
constexpr char kDomain[] = "merchant-1/pos";

std::unique_ptr<KeyRing> Ring(std::map<uint32_t, char> fills) {
  std::map<uint32_t, crypto::SecretBytes> keys;
  for (auto [version, fill] : fills) {
    keys.emplace(version, crypto::SecretBytes(std::string(32, fill)));
  }
  return *KeyRing::FromKeys(std::move(keys));
}

RecordHeader Header(uint32_t key_version) {
  RecordHeader h;
  h.key_version = key_version;
  h.format = TokenFormat::kBinLastFour;
  h.deterministic = true;
  h.created = absl::FromUnixMillis(1700000000123);
  h.expires = absl::FromUnixMillis(1800000000456);
  h.domain = kDomain;
  return h;
}

Card SampleCard() {
  Card c;
  c.pan = crypto::SecretBytes(absl::string_view("5555555555554444"));
  c.exp_month = 7;
  c.exp_year = 2031;
  c.cardholder_name = crypto::SecretBytes(absl::string_view("JANE DOE"));
  return c;
}

TEST(CardRecordTest, OpenReturnsTheSealedCard) {
  auto ring = Ring({{1, 'a'}});
  auto record = SealCardRecord(ring->LeasePrimary()->key(), Header(1), kToken,
                               SampleCard());
  ASSERT_THAT(record, IsOk());
  EXPECT_EQ(static_cast<uint8_t>((*record)[0]), kCardRecordFormatV3);
  EXPECT_EQ(util::ReadBigEndian32(record->substr(1, 4)), 1u);
  EXPECT_LE(record->size(), kMaxCardRecordBytes);
  auto opened = OpenCardRecord(*ring, kToken, *record);
  ASSERT_THAT(opened, IsOk());
  EXPECT_EQ(opened->header.domain, kDomain);
  EXPECT_EQ(opened->header.format, TokenFormat::kBinLastFour);
  EXPECT_TRUE(opened->header.deterministic);
  EXPECT_EQ(opened->header.created, absl::FromUnixMillis(1700000000123));
  EXPECT_EQ(opened->header.expires, absl::FromUnixMillis(1800000000456));
  EXPECT_EQ(opened->card.pan.view(), "5555555555554444");
  EXPECT_EQ(opened->card.exp_month, 7u);
  EXPECT_EQ(opened->card.exp_year, 2031u);
  EXPECT_EQ(opened->card.cardholder_name.view(), "JANE DOE");
}

TEST(CardRecordTest, RecordDoesNotContainThePan) {
  auto ring = Ring({{1, 'a'}});
  std::string record = *SealCardRecord(ring->LeasePrimary()->key(), Header(1),
                                       kToken, SampleCard());
  EXPECT_EQ(record.find("5555555555554444"), std::string::npos);
  EXPECT_EQ(record.find("4444"), std::string::npos);
  EXPECT_EQ(record.find("JANE"), std::string::npos);
}

TEST(CardRecordTest, FlippingAnyByteFailsToOpen) {
  auto ring = Ring({{1, 'a'}});
  std::string record = *SealCardRecord(ring->LeasePrimary()->key(), Header(1),
                                       kToken, SampleCard());
  for (size_t i = 0; i < record.size(); ++i) {
    for (uint8_t bit : {0x01, 0x80}) {
      std::string changed = record;
      changed[i] ^= bit;
      EXPECT_THAT(OpenCardRecord(*ring, kToken, changed),
                  StatusIs(absl::StatusCode::kDataLoss))
          << "byte " << i << " bit " << int{bit};
    }
  }
}

TEST(CardRecordTest, TruncatedOrExtendedRecordFails) {
  auto ring = Ring({{1, 'a'}});
  std::string record = *SealCardRecord(ring->LeasePrimary()->key(), Header(1),
                                       kToken, SampleCard());
  for (size_t len = 0; len < record.size(); ++len) {
    EXPECT_THAT(OpenCardRecord(*ring, kToken, record.substr(0, len)),
                StatusIs(absl::StatusCode::kDataLoss));
  }
  EXPECT_THAT(OpenCardRecord(*ring, kToken, record + "x"),
              StatusIs(absl::StatusCode::kDataLoss));
}

TEST(CardRecordTest, RecordCopiedUnderAnotherTokenFails) {
  auto ring = Ring({{1, 'a'}});
  std::string record = *SealCardRecord(ring->LeasePrimary()->key(), Header(1),
                                       kToken, SampleCard());
  EXPECT_THAT(OpenCardRecord(*ring, kOtherToken, record),
              StatusIs(absl::StatusCode::kDataLoss));
}

TEST(CardRecordTest, RecordMovedToAnotherDomainFails) {
  auto ring = Ring({{1, 'a'}});
  std::string record = *SealCardRecord(ring->LeasePrimary()->key(), Header(1),
                                       kToken, SampleCard());
  // "merchant-1/pos" -> "merchant-2/pos": same length, header edited only.
  std::string moved = record;
  moved[24 + 9] = '2';
  ASSERT_NE(moved.find("merchant-2/pos"), std::string::npos);
  EXPECT_THAT(OpenCardRecord(*ring, kToken, moved),
              StatusIs(absl::StatusCode::kDataLoss));
}

TEST(CardRecordTest, HeaderIsReadableWithoutKeysAndNeverExpiresByDefault) {
  auto ring = Ring({{1, 'a'}});
  RecordHeader forever = Header(1);
  forever.expires = absl::InfiniteFuture();
  forever.deterministic = false;
  std::string record = *SealCardRecord(ring->LeasePrimary()->key(), forever,
                                       kToken, SampleCard());
  auto header = ParseRecordHeader(record);
  ASSERT_THAT(header, IsOk());
  EXPECT_EQ(header->expires, absl::InfiniteFuture());
  EXPECT_FALSE(header->deterministic);
  EXPECT_EQ(header->domain, kDomain);
  EXPECT_EQ(util::ReadBigEndian64(record.substr(15, 8)), 0u);
}

TEST(CardRecordTest, ExtendedExpiryFailsToOpen) {
  auto ring = Ring({{1, 'a'}});
  std::string record = *SealCardRecord(ring->LeasePrimary()->key(), Header(1),
                                       kToken, SampleCard());
  // "Never expires" written over the expiry: the header is authenticated.
  std::string extended = record;
  for (int i = 15; i < 23; ++i) extended[i] = 0;
  ASSERT_THAT(ParseRecordHeader(extended), IsOk());
  EXPECT_THAT(OpenCardRecord(*ring, kToken, extended),
              StatusIs(absl::StatusCode::kDataLoss));
}

TEST(CardRecordTest, ExpiryNotAfterCreationIsRefused) {
  auto ring = Ring({{1, 'a'}});
  RecordHeader h = Header(1);
  h.expires = h.created;
  EXPECT_THAT(
      SealCardRecord(ring->LeasePrimary()->key(), h, kToken, SampleCard()),
      StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(CardRecordTest, WrongKeyVersionFails) {
  auto ring = Ring({{1, 'a'}, {2, 'b'}});
  auto key1 = ring->Get(1);
  ASSERT_THAT(key1, IsOk());
  std::string record = *SealCardRecord(**key1, Header(1), kToken, SampleCard());
  // Relabelled as version 2: a key exists but the AAD and key differ.
  std::string relabelled = record;
  relabelled[4] = 2;
  EXPECT_THAT(OpenCardRecord(*ring, kToken, relabelled),
              StatusIs(absl::StatusCode::kDataLoss));
  // Sealed with key 1's bytes but claiming version 2 from the start.
  std::string mislabelled =
      *SealCardRecord(**key1, Header(2), kToken, SampleCard());
  EXPECT_THAT(OpenCardRecord(*ring, kToken, mislabelled),
              StatusIs(absl::StatusCode::kDataLoss));
  // A version the ring does not hold.
  std::string unknown = record;
  unknown[4] = 9;
  EXPECT_THAT(OpenCardRecord(*ring, kToken, unknown),
              StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(OpenCardRecord(*ring, kToken, record), IsOk());
}

TEST(CardRecordTest, RingWithDifferentKeyMaterialFails) {
  std::string record = *SealCardRecord(Ring({{1, 'a'}})->LeasePrimary()->key(),
                                       Header(1), kToken, SampleCard());
  EXPECT_THAT(OpenCardRecord(*Ring({{1, 'z'}}), kToken, record),
              StatusIs(absl::StatusCode::kDataLoss));
}

}  // namespace
}  // namespace cardvault::vault
