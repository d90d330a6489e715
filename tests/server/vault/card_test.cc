#include "server/vault/card.h"

#include <random>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_cards.h"

namespace cardvault::vault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

const absl::Time kNow = absl::FromCivil(
    absl::CivilSecond(2026, 11, 25, 12, 0, 0), absl::UTCTimeZone());

Card MakeCard(absl::string_view pan, uint32_t month = 0, uint32_t year = 0,
              absl::string_view name = "") {
  Card c;
  c.pan = crypto::SecretBytes(pan);
  c.exp_month = month;
  c.exp_year = year;
  c.cardholder_name = crypto::SecretBytes(name);
  return c;
}

struct BadCase {
  const char* label;
  std::string pan;
  uint32_t month;
  uint32_t year;
  std::string name;
  // The submitted value that must not be echoed (PAN, or the name).
  std::string secret;
};

std::vector<BadCase> BadCases() {
  const std::string good = "4111111111111111";
  return {
      {"luhn failure", "4111111111111112", 0, 0, "", "4111111111111112"},
      {"letters", "41111111111a1111", 0, 0, "", "41111111111a1111"},
      {"arabic-indic digits",
       "\u0664\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661"
       "\u0661\u0661\u0661\u0661\u0661",
       0, 0, "", "\u0664\u0661\u0661\u0661"},
      {"fullwidth digits", "\uff14\uff11\uff11\uff11111111111111", 0, 0, "",
       "\uff14\uff11"},
      {"too short (11)", "41111111116", 0, 0, "", "41111111116"},
      {"too long (20)", "41111111111111111113", 0, 0, "",
       "41111111111111111113"},
      {"empty", "", 0, 0, "", ""},
      {"one MiB", std::string(1 << 20, '4'), 0, 0, "", std::string(64, '4')},
      {"embedded NUL",
       std::string("4111111\0"
                   "11111111",
                   16),
       0, 0, "", "4111111"},
      {"leading space", " " + good, 0, 0, "", good},
      {"trailing space", good + " ", 0, 0, "", good},
      {"trailing newline", good + "\n", 0, 0, "", good},
      {"space separators", "4111 1111 1111 1111", 0, 0, "",
       "4111 1111 1111 1111"},
      {"dash separators", "4111-1111-1111-1111", 0, 0, "",
       "4111-1111-1111-1111"},
      {"expiry month 0 with year", good, 0, 2030, "", good},
      {"expiry month 13", good, 13, 2030, "", good},
      {"expiry month without year", good, 12, 0, "", good},
      {"expiry in the past", good, 10, 2026, "", good},
      {"expiry two-digit year", good, 12, 30, "", good},
      {"expiry absurdly far", good, 12, 2099, "", good},
      {"name with newline", good, 0, 0, "JANE\nDOE", "JANE\nDOE"},
      {"name with NUL", good, 0, 0, std::string("JANE\0DOE", 8),
       std::string("JANE\0DOE", 8)},
      {"name with escape", good, 0, 0, "JANE\x1b[31mDOE", "JANE\x1b[31mDOE"},
      {"name with C1 control", good, 0, 0, "JANE\u0085DOE", "JANE\u0085DOE"},
      {"name with DEL", good, 0, 0, "JANE\x7f", "JANE\x7f"},
      {"name invalid UTF-8", good, 0, 0, "JANE\xff\xfe", "JANE\xff\xfe"},
      {"name too long", good, 0, 0, std::string(129, 'N'),
       std::string(129, 'N')},
  };
}

TEST(CardValidationTest, RejectsEveryBadInputWithoutEchoingIt) {
  for (const BadCase& c : BadCases()) {
    SCOPED_TRACE(c.label);
    absl::Status s =
        ValidateCard(MakeCard(c.pan, c.month, c.year, c.name), kNow);
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
    if (!c.secret.empty()) {
      EXPECT_THAT(std::string(s.message()), Not(HasSubstr(c.secret)));
    }
    // No run of 4+ digits from the submitted PAN appears either.
    for (size_t i = 0; i + 4 <= c.pan.size() && i < 64; ++i) {
      const std::string run = c.pan.substr(i, 4);
      if (run.find_first_not_of("0123456789") == std::string::npos) {
        EXPECT_THAT(std::string(s.message()), Not(HasSubstr(run)));
      }
    }
  }
}

TEST(CardValidationTest, AcceptsEveryBrandAndLength) {
  std::mt19937_64 rng(7);
  for (const testing::Brand& brand : testing::Brands()) {
    for (const std::string& prefix : brand.prefixes) {
      for (int len : brand.lengths) {
        const std::string pan = testing::MakePan(prefix, len, rng);
        EXPECT_THAT(ValidateCard(MakeCard(pan), kNow), IsOk())
            << brand.name << " " << len;
      }
    }
  }
}

TEST(CardValidationTest, AcceptsCurrentMonthAndPrintableUnicodeName) {
  EXPECT_THAT(ValidateCard(MakeCard("4111111111111111", 11, 2026,
                                    "Zoë O'Brien-Łukasz 山田"),
                           kNow),
              IsOk());
  EXPECT_THAT(ValidateCard(MakeCard("4111111111111111", 1, 2076), kNow),
              IsOk());
}

TEST(CardValidationTest, LuhnMatchesKnownValues) {
  EXPECT_TRUE(PassesLuhn("79927398713"));
  EXPECT_FALSE(PassesLuhn("79927398710"));
  EXPECT_TRUE(PassesLuhn("378282246310005"));
}

TEST(CardTest, PrintsRedacted) {
  std::ostringstream out;
  out << MakeCard("4111111111111111", 12, 2030, "JANE");
  EXPECT_THAT(out.str(), Not(HasSubstr("4111")));
  EXPECT_THAT(out.str(), Not(HasSubstr("JANE")));
}

}  // namespace
}  // namespace cardvault::vault
