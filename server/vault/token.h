// Token strings, in three formats chosen per request.
//
// kRandom (default): "tok_" followed by 26 characters of lowercase RFC 4648
// base32 ("a-z2-7", no padding) encoding 16 bytes (128 bits) from the
// CSPRNG; the last character carries 3 bits and is always one of "aeimquy4"
// (low two bits zero). Never derived from card data; cannot pass for a PAN
// (it has letters and a prefix); exactly kTokenLength characters.
//
// kLastFour and kBinLastFour: numeric, as long as the PAN, keeping its last 4
// digits (and for kBinLastFour up to its first 6, or 8 when asked, PCI DSS
// 3.4.1); every other digit is drawn uniformly from the CSPRNG. A token
// always hides at least kMinHiddenPanDigits of its PAN, so short PANs keep
// fewer BIN digits: 12 digits keep 2, 15 keep 5, 16 keep 6; 8 are kept only
// from 18 digits on (KeptBinDigits). Drawing repeats until the result fails the
// Luhn check, so no numeric token can be taken for a card (PCI tokenization
// guidelines) and none equals its PAN (which passes). Collisions with existing
// tokens are handled by the vault: insert only if absent, otherwise draw again,
// at most Vault::Options::max_numeric_token_attempts times, then
// RESOURCE_EXHAUSTED. So every (BIN, last four) has at least 10^6 fillings,
// 900,000 of which fail Luhn: the most crowded space the formats allow.
#ifndef CARDVAULT_SERVER_VAULT_TOKEN_H_
#define CARDVAULT_SERVER_VAULT_TOKEN_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace cardvault::vault {

enum class TokenFormat : uint8_t {
  kRandom = 1,
  kLastFour = 2,
  kBinLastFour = 3,
};

inline constexpr absl::string_view kTokenPrefix = "tok_";
inline constexpr size_t kTokenRandomBytes = 16;
inline constexpr size_t kTokenLength = 4 + 26;
inline constexpr size_t kKeptLastDigits = 4;
// Digits of the PAN a numeric token never keeps: with fewer hidden, Luhn
// leaves too few candidates (6 hidden digits: 100,000).
inline constexpr size_t kMinHiddenPanDigits = 6;
// Draws of the free digits before giving up on finding a Luhn-failing
// token; each draw fails Luhn with probability 9/10.
inline constexpr int kMaxLuhnDraws = 64;

// A new random-format token with 128 bits from RAND_bytes; UNAVAILABLE if
// the CSPRNG fails.
absl::StatusOr<std::string> GenerateToken();

// A new numeric token for `pan` (validated, 12-19 digits) in `format`
// (kLastFour or kBinLastFour) keeping `bin_digits` (6 or 8; 8 applies only
// to PANs of 16 or more digits, shorter ones keep 6) leading digits for
// kBinLastFour.
absl::StatusOr<std::string> GenerateNumericToken(TokenFormat format,
                                                 absl::string_view pan,
                                                 size_t bin_digits);

// How many leading digits of a PAN of `pan_length` a kBinLastFour token (and
// GetTokenInfo's BIN) keeps: `bin_digits` (6 or 8), but never so many that
// fewer than kMinHiddenPanDigits stay hidden.
size_t KeptBinDigits(size_t pan_length, size_t bin_digits);

// True if `token` is a well-formed token of any format: the random format
// in its canonical encoding, or 12-19 ASCII digits failing the Luhn check.
bool IsWellFormedToken(absl::string_view token);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_TOKEN_H_
