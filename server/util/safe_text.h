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

// Which digit runs SafeText masks as possible card numbers.
enum class CardNumbers {
  // Runs of 12-19 digits that pass Luhn (kept: their last four), runs of
  // more than 19, and runs of 13-19 holding any 12-19 digit stretch that
  // passes Luhn (a PAN with a CVV or a digit added). For every field but
  // tokens.
  kAnyWithin,
  // Only runs of 12-19 passing Luhn and runs of more than 19: for token
  // fields, which hold numeric tokens (Luhn-failing digit runs the vault
  // itself drew, recorded only once found; recorded_value.h).
  kExactRuns,
  // As kAnyWithin, and also any stretch of digits joined by single
  // separators (space - . _ /) holding 12 or more digits, masked whole:
  // for text the server did not compose, such as a library's log message
  // quoting a header ("4111 1111 1111 1111").
  kGroupedToo,
};

// True if SafeText (kAnyWithin) would mask a digit run of `text`.
bool HoldsCardNumber(absl::string_view text);

// `text` made safe to record or log:
//  - bytes outside printable ASCII (0x20-0x7e) and the backslash become
//    "\xHH", so a value cannot end a log line or forge another;
//  - then digit runs that may be card numbers (`rule`) are masked: a run of
//    12-19 digits passing Luhn keeps only its last four, other such runs
//    become '*' whole;
//  - over `max_bytes`, it is cut there and ended with "...", never inside
//    an escape or a run of digits (no part of a number is left at the end).
std::string SafeText(absl::string_view text, size_t max_bytes,
                     CardNumbers rule = CardNumbers::kAnyWithin);

}  // namespace cardvault::util

#endif  // CARDVAULT_SERVER_UTIL_SAFE_TEXT_H_
