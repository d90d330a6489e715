// The sealed card record stored under each token (table kTokens).
//
// Record, byte by byte (format 3; formats 1 and 2 of earlier pre-releases
// are no longer read):
//   offset  size  field
//   0       1     record format version, kCardRecordFormatV3 = 0x03
//   1       4     data-key version, uint32 big-endian
//   5       1     token format: 1 random, 2 last four, 3 BIN and last four
//   6       1     flags: bit 0 = deterministic (a PAN index entry names this
//                 token); other bits zero
//   7       8     created, Unix milliseconds, uint64 big-endian
//   15      8     expires, Unix milliseconds, uint64 big-endian; 0 = never
//   23      1     token domain length D, 1..kMaxRecordDomainBytes
//   24      D     token domain, e.g. "merchant-42/ecommerce"
//   24+D    12    AES-GCM nonce (random per record)
//   36+D    P     AES-256-GCM ciphertext of the plaintext below
//   36+D+P  16    GCM tag
//
// Associated data (authenticated, not stored):
//   "cardvault/card-record" || header bytes [0, 24+D) || token length (1) ||
//   token
// so a record copied under another token, moved to another domain, given a
// later expiry, or relabelled with another key or format, fails to open. The
// header is readable without keys (compaction drops expired records by it)
// but trusted only once the record has opened.
//
// Plaintext (P bytes, never stored in clear):
//   0       1     PAN length N, kMinPanDigits..kMaxPanDigits
//   1       N     PAN, ASCII digits
//   1+N     1     expiry month, 0 = not given
//   2+N     2     expiry year, uint16 big-endian, 0 = not given
//   4+N     1     cardholder name length M, 0..kMaxCardholderNameBytes
//   5+N     M     cardholder name, UTF-8
// There is no field for a CVV: it is never stored (PCI DSS 3.3.1.2).
#ifndef CARDVAULT_SERVER_VAULT_CARD_RECORD_H_
#define CARDVAULT_SERVER_VAULT_CARD_RECORD_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/crypto/aead.h"
#include "server/vault/card.h"
#include "server/vault/key_ring.h"
#include "server/vault/token.h"

namespace cardvault::vault {

inline constexpr uint8_t kCardRecordFormatV3 = 0x03;
inline constexpr uint8_t kRecordFlagDeterministic = 0x01;
inline constexpr size_t kMaxRecordDomainBytes = 64;
inline constexpr size_t kCardRecordHeaderBytes = 1 + 4 + 1 + 1 + 8 + 8 + 1;
inline constexpr size_t kMaxCardPlaintextBytes =
    1 + kMaxPanDigits + 1 + 2 + 1 + kMaxCardholderNameBytes;
inline constexpr size_t kMaxCardRecordBytes =
    kCardRecordHeaderBytes + kMaxRecordDomainBytes + crypto::Aead::kOverhead +
    kMaxCardPlaintextBytes;

// The record's clear header.
struct RecordHeader {
  uint32_t key_version = 0;
  TokenFormat format = TokenFormat::kRandom;
  bool deterministic = false;
  absl::Time created = absl::UnixEpoch();
  absl::Time expires = absl::InfiniteFuture();  // never
  std::string domain;
};

// A card opened from its record, with its (now authenticated) header.
struct OpenedCard {
  Card card;
  RecordHeader header;
};

// Seals a validated `card` under `token` with `key`, whose version is
// `header.key_version`.
absl::StatusOr<std::string> SealCardRecord(const crypto::Aead& key,
                                           const RecordHeader& header,
                                           absl::string_view token,
                                           const Card& card);

// Reads the header without opening the record (not yet authenticated).
// DATA_LOSS for a malformed record.
absl::StatusOr<RecordHeader> ParseRecordHeader(absl::string_view record);

// Opens the record stored under `token`. Any mismatch (format, key version,
// token, header, a changed byte) gives DATA_LOSS and no card data.
absl::StatusOr<OpenedCard> OpenCardRecord(const KeyRing& keys,
                                          absl::string_view token,
                                          absl::string_view record);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_CARD_RECORD_H_
