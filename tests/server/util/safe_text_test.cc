#include "server/util/safe_text.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cardvault::util {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(SafeTextTest, MasksRunsOfDigitsThatPassLuhnKeepingTheLastFour) {
  EXPECT_EQ(SafeText("4111111111111111", 100), "************1111");
  EXPECT_EQ(SafeText("x378282246310005y", 100), "x***********0005y");
  EXPECT_EQ(SafeText("pan=5105105105105100;", 100), "pan=************5100;");
  // Two numbers in one value are both masked.
  EXPECT_EQ(SafeText("4111111111111111 4012888888881881", 100),
            "************1111 ************1881");
}

TEST(SafeTextTest, KeepsDigitRunsThatCannotBeCardNumbers) {
  // A numeric token fails Luhn; token fields are masked by exact runs.
  EXPECT_EQ(SafeText("4111111111111112", 100, CardNumbers::kExactRuns),
            "4111111111111112");
  EXPECT_EQ(SafeText("79927398713", 100), "79927398713");  // 11 digits
  EXPECT_EQ(SafeText("sequence=1234", 100), "sequence=1234");
}

TEST(SafeTextTest, MasksACardNumberWithDigitsAddedOrRemoved) {
  // PAN + CVV, PAN + CID, as a whole failing Luhn.
  EXPECT_EQ(SafeText("t=5105105105105100737", 100), "t=*******************");
  EXPECT_EQ(SafeText("3782822463100051234", 100), std::string(19, '*'));
  // Only whole runs count for token fields.
  EXPECT_EQ(SafeText("5105105105105100737", 100, CardNumbers::kExactRuns),
            "5105105105105100737");
}

TEST(SafeTextTest, TheDigitsOfAnEscapeCannotCompleteACardNumber) {
  // "\x13" + 5410014004955 would read 135410014004955, a UATP test PAN.
  EXPECT_EQ(SafeText("\x13"
                     "5410014004955",
                     100),
            "\\x***********4955");
}

TEST(SafeTextTest, GroupedDigitsAreMaskedInLibraryText) {
  EXPECT_EQ(SafeText("v=4111 1111 1111 1111;", 100, CardNumbers::kGroupedToo),
            "v=**** **** **** ****;");
  EXPECT_EQ(SafeText("4111.1111_1111/1111", 100, CardNumbers::kGroupedToo),
            "****.****_****/****");
  // Addresses and short numbers stay readable.
  EXPECT_EQ(SafeText("ipv4:127.0.0.1:54321", 100, CardNumbers::kGroupedToo),
            "ipv4:127.0.0.1:54321");
  // Not grouped digits in text the server composed.
  EXPECT_EQ(SafeText("4111 1111 1111 1111", 100), "4111 1111 1111 1111");
}

TEST(SafeTextTest, TheBoundNeverLeavesPartOfANumber) {
  EXPECT_EQ(SafeText("id 4111111111111111", 10), "id *******...");
  EXPECT_EQ(SafeText("id 41111111 x", 10), "id ...");
}

TEST(SafeTextTest, MasksEveryRunLongerThanACardNumber) {
  // A PAN with a prefix or suffix digit may not pass Luhn as a whole.
  EXPECT_EQ(SafeText("94111111111111111111", 100), std::string(20, '*'));
}

TEST(SafeTextTest, EscapesControlCharactersAndNonAscii) {
  EXPECT_EQ(SafeText("a\nW forged line", 100), "a\\x0aW forged line");
  EXPECT_EQ(SafeText("tab\tcr\r\\", 100), "tab\\x09cr\\x0d\\x5c");
  EXPECT_EQ(SafeText("caf\xc3\xa9", 100), "caf\\xc3\\xa9");
  EXPECT_EQ(SafeText(std::string("nul\0x", 5), 100), "nul\\x00x");
}

TEST(SafeTextTest, EscapedSeparatorsDoNotHideACardNumber) {
  // A separator escaped as "\x0a" does not hide the two halves.
  EXPECT_THAT(SafeText("41111111\n11111111", 100),
              Not(HasSubstr("1111111111")));
}

TEST(SafeTextTest, CutsAtTheBoundNeverInsideAnEscape) {
  EXPECT_EQ(SafeText("abcdefgh", 5), "abcde...");
  EXPECT_EQ(SafeText("abcd\nefgh", 6), "abcd...");
  EXPECT_EQ(SafeText("abc", 3), "abc");
}

TEST(SafeTextTest, HoldsCardNumberSeesWhatSafeTextWouldMask) {
  EXPECT_TRUE(HoldsCardNumber("id 4111111111111111"));
  EXPECT_TRUE(HoldsCardNumber(std::string(25, '7')));
  EXPECT_TRUE(HoldsCardNumber("5105105105105100737"));  // PAN + CVV
  EXPECT_FALSE(HoldsCardNumber("rotate dek00000003 per ticket 123456"));
  EXPECT_FALSE(HoldsCardNumber("spiffe://cardvault.dev/pos"));
}

}  // namespace
}  // namespace cardvault::util
