// The sealed card record stored under each token (column family "tokens").
//
// Record, byte by byte (format 2; format 1 of the first release had no
// domain and is no longer read):
//   offset  size  field
//   0       1     record format version, kCardRecordFormatV2 = 0x02
//   1       4     data-key version, uint32 big-endian
//   5       1     token domain length D, 1..auth::kMaxDomainBytes
//   6       D     token domain, e.g. "merchant-42/ecommerce"
//   6+D     12    AES-GCM nonce (random per record)
//   18+D    P     AES-256-GCM ciphertext of the plaintext below
//   18+D+P  16    GCM tag
//
// Associated data (authenticated, not stored):
//   "cardvault/card-record" || format version (1) || key version (4, BE) ||
//   token length (1) || token || domain length (1) || domain
// so a record copied under another token, moved to another domain, or
// relabelled with another key version or format version, fails to open.
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
#include "server/crypto/aes_gcm.h"
#include "server/vault/card.h"
#include "server/vault/key_ring.h"

namespace cardvault::vault {

inline constexpr uint8_t kCardRecordFormatV2 = 0x02;
inline constexpr size_t kMaxRecordDomainBytes = 64;
inline constexpr size_t kCardRecordHeaderBytes = 1 + 4 + 1;  // + domain
inline constexpr size_t kMaxCardPlaintextBytes =
    1 + kMaxPanDigits + 1 + 2 + 1 + kMaxCardholderNameBytes;
inline constexpr size_t kMaxCardRecordBytes =
    kCardRecordHeaderBytes + kMaxRecordDomainBytes + crypto::AesGcm::kOverhead +
    kMaxCardPlaintextBytes;

// A card opened from its record, with the token domain it is bound to.
struct OpenedCard {
  Card card;
  std::string domain;
};

// Seals a validated `card` under `token` in `domain` with `key` of
// `key_version`.
absl::StatusOr<std::string> SealCardRecord(const crypto::AesGcm& key,
                                           uint32_t key_version,
                                           absl::string_view token,
                                           absl::string_view domain,
                                           const Card& card);

// Opens the record stored under `token`. Any mismatch (format, key version,
// token, domain, a changed byte) gives DATA_LOSS and no card data.
absl::StatusOr<OpenedCard> OpenCardRecord(const KeyRing& keys,
                                          absl::string_view token,
                                          absl::string_view record);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_CARD_RECORD_H_
