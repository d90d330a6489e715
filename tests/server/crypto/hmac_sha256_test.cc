#include "server/crypto/hmac_sha256.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/crypto/context_pool.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::crypto {
namespace {

using ::cardvault::testing::StatusIs;

// RFC 4231 test cases 6 and 7 (a 131-byte key of 0xaa).
constexpr char kCase6Data[] =
    "Test Using Larger Than Block-Size Key - Hash Key First";
constexpr char kCase6Mac[] =
    "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54";
constexpr char kCase7Data[] =
    "This is a test using a larger than block-size key and a larger than "
    "block-size data. The key needs to be hashed before being used by the "
    "HMAC algorithm.";
constexpr char kCase7Mac[] =
    "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2";

std::unique_ptr<HmacSha256> Rfc4231Key() {
  return *HmacSha256::Create(SecretBytes(std::string(131, '\xaa')));
}

std::string Hex(absl::string_view mac) { return absl::BytesToHexString(mac); }

TEST(HmacSha256Test, RejectsKeysShorterThan256Bits) {
  EXPECT_THAT(HmacSha256::Create(SecretBytes(std::string(31, 'k'))),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(HmacSha256Test, MatchesRfc4231WhenItsContextsAreReused) {
  auto key = Rfc4231Key();
  // Interleaved and repeated: every MAC after the first few runs on a
  // context that finished another MAC.
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(Hex(key->Compute(kCase6Data)), kCase6Mac);
    EXPECT_EQ(Hex(key->Compute(kCase7Data)), kCase7Mac);
  }
}

TEST(HmacSha256Test, SecretPartsMacLikeTheirConcatenation) {
  auto key = Rfc4231Key();
  EXPECT_EQ(Hex(key->ComputeSecret({"Test Using Larger Than Block-Size ",
                                    "Key - Hash Key First"})),
            kCase6Mac);
  EXPECT_EQ(Hex(key->ComputeSecret({"", kCase7Data, ""})), kCase7Mac);
}

TEST(HmacSha256Test, VerifyAcceptsOnlyTheMacOfTheData) {
  auto key = Rfc4231Key();
  const std::string mac = key->Compute(kCase6Data);
  EXPECT_TRUE(key->Verify(kCase6Data, mac));
  EXPECT_FALSE(key->Verify(kCase7Data, mac));
  EXPECT_FALSE(key->Verify(kCase6Data, mac.substr(1)));
  std::string changed = mac;
  changed[31] ^= 0x01;
  EXPECT_FALSE(key->Verify(kCase6Data, changed));
}

TEST(HmacSha256Test, ConcurrentMacsMatchSequentialOnes) {
  auto key = Rfc4231Key();
  auto reference = Rfc4231Key();
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  const int thread_count =
      2 * static_cast<int>(ContextPool<std::unique_ptr<int>>::kMaxKept);
  for (int t = 0; t < thread_count; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const std::string data = absl::StrCat("record ", t, "/", i);
        if (key->Compute(data) != reference->ComputeSecret({data})) {
          ++mismatches;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace cardvault::crypto
