// The second line of defence for every string a record or log line holds:
// whatever the first line (validate, else record a marker; see
// server/audit/recorded_value.h) let through, SafeText leaves no card number,
// no control character and nothing longer than a named bound.
//
// Thread safety: pure functions.
#ifndef CARDVAULT_SERVER_UTIL_SAFE_TEXT_H_
#define CARDVAULT_SERVER_UTIL_SAFE_TEXT_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace cardvault::util {

// Digit runs of these lengths are possible PANs (ISO/IEC 7812).
inline constexpr size_t kMinCardDigits = 12;
inline constexpr size_t kMaxCardDigits = 19;

// True if the ASCII digits `digits` pass the Luhn (mod 10) check.
bool PassesLuhn(absl::string_view digits);

// True if `text` holds a run of 12-19 ASCII digits, bounded by non-digits
// or the ends, that passes Luhn, or any run of more than 19 digits.
bool HoldsCardNumber(absl::string_view text);

// `text` made safe to record or log:
//  - every maximal run of 12-19 ASCII digits passing Luhn keeps its last
//    four digits, the others become '*' (PCI DSS 3.4.1 masking); a run of
//    more than 19 digits, which no value the server records has, becomes
//    '*' whole;
//  - bytes outside printable ASCII (0x20-0x7e) and the backslash are
//    written as "\xHH", so a value cannot end a log line or forge another;
//  - over `max_bytes` (after escaping), cut to `max_bytes` and ended with
//    "...", never inside an escape.
std::string SafeText(absl::string_view text, size_t max_bytes);

}  // namespace cardvault::util

#endif  // CARDVAULT_SERVER_UTIL_SAFE_TEXT_H_
