#include "server/crypto/secret_bytes.h"

#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cardvault::crypto {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(SecretBytesTest, PrintsLengthButNeverContent) {
  SecretBytes secret(absl::string_view("4111111111111111"));
  std::ostringstream out;
  out << secret;
  EXPECT_THAT(out.str(), Not(HasSubstr("4111")));
  EXPECT_THAT(out.str(), HasSubstr("16 bytes"));
}

TEST(SecretBytesTest, ComparesByContent) {
  EXPECT_EQ(SecretBytes(absl::string_view("abc")),
            SecretBytes(absl::string_view("abc")));
  EXPECT_NE(SecretBytes(absl::string_view("abc")),
            SecretBytes(absl::string_view("abd")));
  EXPECT_NE(SecretBytes(absl::string_view("abc")),
            SecretBytes(absl::string_view("abcd")));
}

TEST(SecretBytesTest, MoveLeavesSourceEmpty) {
  SecretBytes a(absl::string_view("secret"));
  SecretBytes b(std::move(a));
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(b.view(), "secret");
}

TEST(SecretBytesTest, LockedPagesHoldDataAndAreLocked) {
  SecretBytes key(absl::string_view("0123456789abcdef0123456789abcdef"),
                  Protection::kLockedPages);
  EXPECT_EQ(key.view(), "0123456789abcdef0123456789abcdef");
  EXPECT_EQ(key.protection(), Protection::kLockedPages);
#ifdef CARDVAULT_SANITIZED
  GTEST_SKIP() << "sanitizer runtimes ignore mlock; checked in the plain build";
#endif
  // Locked pages show in VmLck of this process.
  std::ifstream status("/proc/self/status");
  std::string line;
  long locked_kb = -1;
  while (std::getline(status, line)) {
    if (line.rfind("VmLck:", 0) == 0) locked_kb = std::stol(line.substr(6));
  }
  EXPECT_GT(locked_kb, 0);
}

TEST(SecretBytesTest, TruncateKeepsPrefix) {
  SecretBytes s(absl::string_view("abcdef"));
  s.Truncate(3);
  EXPECT_EQ(s.view(), "abc");
}

TEST(SecretBytesTest, CloneIsIndependentCopy) {
  SecretBytes a(absl::string_view("xyz"));
  SecretBytes b = a.Clone();
  b.data()[0] = 'q';
  EXPECT_EQ(a.view(), "xyz");
  EXPECT_EQ(b.view(), "qyz");
}

}  // namespace
}  // namespace cardvault::crypto
