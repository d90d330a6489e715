// Searches for card data in files too large to search once per value, such
// as a PostgreSQL data directory (tens of MB of WAL and catalogs) and a
// statement log: one pass over the bytes answers for every value.
#ifndef CARDVAULT_TESTS_TESTING_CARD_DATA_SCAN_H_
#define CARDVAULT_TESTS_TESTING_CARD_DATA_SCAN_H_

#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"

namespace cardvault::testing {

// `text` with every run of hex digits after a backslash-x (how PostgreSQL
// logs bytea parameters, also inside arrays) replaced by the bytes it spells
// (the backslash-x dropped): card data in a bound parameter is then found as
// it is in a file, and the hex digits themselves make no chance matches of
// decimal values.
std::string WithHexDecoded(absl::string_view text);

// Which of `wanted` (non-empty strings of ASCII digits) occur in `bytes`. A
// string of digits occurs only inside a maximal run of digits, so one pass
// over the runs gives exactly what a search for each value would.
absl::flat_hash_set<std::string> DigitStringsIn(
    absl::string_view bytes, const absl::flat_hash_set<std::string>& wanted);

// The values of `wanted` (strings of ASCII digits of one length) that occur
// right after `prefix` in `bytes`: exactly what a search for each
// prefix + value would find.
absl::flat_hash_set<std::string> DigitStringsAfter(
    absl::string_view bytes, absl::string_view prefix,
    const absl::flat_hash_set<std::string>& wanted);

}  // namespace cardvault::testing

#endif  // CARDVAULT_TESTS_TESTING_CARD_DATA_SCAN_H_
