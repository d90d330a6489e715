#include "tests/testing/test_cards.h"

#include <set>

#include "server/vault/card.h"

namespace cardvault::testing {

const std::vector<Brand>& Brands() {
  static const auto* brands = new std::vector<Brand>{
      {"visa", {"4"}, {13, 16, 19}},
      {"mastercard", {"51", "52", "53", "54", "55", "2221", "2720"}, {16}},
      {"amex", {"34", "37"}, {15}},
      {"discover", {"6011", "65"}, {16}},
      {"jcb", {"3528", "3589"}, {16, 17, 18, 19}},
      {"diners", {"36"}, {14}},
      {"unionpay", {"62"}, {16, 17, 18, 19}},
      {"maestro", {"5018", "6759"}, {12, 13, 14, 15, 16, 17, 18, 19}},
  };
  return *brands;
}

std::string MakePan(const std::string& prefix, int length,
                    std::mt19937_64& rng) {
  std::string pan = prefix;
  std::uniform_int_distribution<int> digit(0, 9);
  while (static_cast<int>(pan.size()) < length - 1) {
    pan.push_back(static_cast<char>('0' + digit(rng)));
  }
  // The check digit: the one of ten that makes the whole PAN pass Luhn.
  pan.push_back('0');
  while (!vault::PassesLuhn(pan)) ++pan.back();
  return pan;
}

std::vector<std::string> MakePans(int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::pair<std::string, int>> shapes;
  for (const Brand& b : Brands()) {
    for (const std::string& p : b.prefixes) {
      for (int len : b.lengths) shapes.emplace_back(p, len);
    }
  }
  std::set<std::string> seen;
  std::vector<std::string> out;
  for (size_t i = 0; static_cast<int>(out.size()) < count; ++i) {
    const auto& [prefix, len] = shapes[i % shapes.size()];
    std::string pan = MakePan(prefix, len, rng);
    if (seen.insert(pan).second) out.push_back(std::move(pan));
  }
  return out;
}

}  // namespace cardvault::testing
