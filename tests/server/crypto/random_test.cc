#include "server/crypto/random.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::crypto {
namespace {

using ::cardvault::testing::IsOk;

std::string Draw(size_t n) {
  std::string out(n, '\0');
  EXPECT_THAT(FillPublicRandom(absl::MakeSpan(
                  reinterpret_cast<uint8_t*>(out.data()), out.size())),
              IsOk());
  return out;
}

TEST(RandomTest, PublicRandomNeverRepeatsAcrossRefills) {
  std::set<std::string> seen;
  // Sizes that do not divide the buffer, so draws straddle refills.
  const int draws = 4 * kPublicRandomBufferBytes / 12;
  for (int i = 0; i < draws; ++i) seen.insert(Draw(12));
  EXPECT_EQ(seen.size(), static_cast<size_t>(draws));
}

TEST(RandomTest, PublicRandomServesRequestsOfAnySize) {
  const std::string big = Draw(3 * kPublicRandomBufferBytes);
  const std::string exact = Draw(kPublicRandomBufferBytes);
  EXPECT_NE(big.substr(0, kPublicRandomBufferBytes), exact);
  // 4 KiB of DRBG output has no run of 64 zero bytes (p ~ 2^-512).
  EXPECT_EQ(big.find(std::string(64, '\0')), std::string::npos);
  EXPECT_EQ(exact.find(std::string(64, '\0')), std::string::npos);
}

TEST(RandomTest, ForkedChildDrawsOtherValuesThanItsParent) {
  (void)Draw(1);  // the buffer now holds values the child must not repeat
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const std::string value = Draw(16);
    _exit(write(fds[1], value.data(), value.size()) == 16 ? 0 : 1);
  }
  const std::string parent_value = Draw(16);
  std::array<char, 16> child_value{};
  ASSERT_EQ(read(fds[0], child_value.data(), child_value.size()), 16);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  close(fds[0]);
  close(fds[1]);
  EXPECT_NE(std::string(child_value.data(), child_value.size()), parent_value);
}

}  // namespace
}  // namespace cardvault::crypto
