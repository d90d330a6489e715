// The card a vault holds, and the rules card data must meet before it is
// stored.
#ifndef CARDVAULT_SERVER_VAULT_CARD_H_
#define CARDVAULT_SERVER_VAULT_CARD_H_

#include <cstddef>
#include <cstdint>
#include <ostream>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "server/crypto/secret_bytes.h"
#include "server/util/safe_text.h"

namespace cardvault::vault {

inline constexpr size_t kMinPanDigits = 12;
inline constexpr size_t kMaxPanDigits = 19;
inline constexpr size_t kMaxCardholderNameBytes = 128;
// Expiry years accepted: no two-digit years, nothing absurdly far out.
inline constexpr uint32_t kMinExpiryYear = 2000;
inline constexpr uint32_t kMaxExpiryYearsAhead = 50;

// Card data in memory. PAN and name are secrets: wiped on release and never
// printed. Move-only.
struct Card {
  crypto::SecretBytes pan;              // ASCII digits
  uint32_t exp_month = 0;               // 0 = not given
  uint32_t exp_year = 0;                // 0 = not given
  crypto::SecretBytes cardholder_name;  // UTF-8, may be empty

  // Prints "Card(<redacted>)": card data never reaches a log line.
  friend std::ostream& operator<<(std::ostream& os, const Card&) {
    return os << "Card(<redacted>)";
  }
};

enum class CardBrand {
  kUnknown,
  kVisa,
  kMastercard,
  kAmex,
  kDiscover,
  kJcb,
  kDinersClub,
  kUnionPay,
  kMaestro,
};

// The brand a PAN's leading digits (issuer identification number ranges)
// belong to; kUnknown when no range matches.
CardBrand BrandOf(absl::string_view pan);

// True if `digits` (ASCII digits only) passes the Luhn check.
using ::cardvault::util::PassesLuhn;

inline constexpr size_t kMinCvvDigits = 3;
inline constexpr size_t kMaxCvvDigits = 4;

// INVALID_ARGUMENT unless `cvv` is 3 or 4 ASCII digits (value never echoed).
absl::Status ValidateCvv(absl::string_view cvv);

// Checks `card` at time `now`. Errors are INVALID_ARGUMENT with a message that
// names the field and the rule, never the value. Rules:
//  - PAN: 12-19 ASCII digits '0'-'9', Luhn-valid. Spaces, dashes, other
//    separators and surrounding whitespace are rejected, not normalised.
//  - Expiry: both fields zero (not given), or month 1-12 with a four-digit
//    year, not before `now`'s month (UTC), at most 50 years ahead.
//  - Name: at most 128 bytes of valid UTF-8 without C0/C1 control characters
//    or DEL.
absl::Status ValidateCard(const Card& card, absl::Time now);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_CARD_H_
