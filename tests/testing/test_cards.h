// Generated test PANs (never real cards), per
// ../shared/reference/test-cards.md: a brand prefix, random digits, and a Luhn
// check digit.
#ifndef CARDVAULT_TESTS_TESTING_TEST_CARDS_H_
#define CARDVAULT_TESTS_TESTING_TEST_CARDS_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace cardvault::testing {

struct Brand {
  const char* name;
  std::vector<std::string> prefixes;
  std::vector<int> lengths;
};

// Visa, Mastercard (51-55, 2221-2720), Amex, Discover, JCB, Diners, UnionPay,
// Maestro, with their lengths (12 to 19 digits in all).
const std::vector<Brand>& Brands();

// A Luhn-valid PAN of `length` digits starting with `prefix`.
std::string MakePan(const std::string& prefix, int length,
                    std::mt19937_64& rng);

// `count` distinct PANs cycling through every brand, prefix and length.
std::vector<std::string> MakePans(int count, uint64_t seed);

}  // namespace cardvault::testing

#endif  // CARDVAULT_TESTS_TESTING_TEST_CARDS_H_
