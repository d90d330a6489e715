#include "server/crypto/aes_gcm.h"

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/crypto/context_pool.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::crypto {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;

std::unique_ptr<AesGcm> MakeKey(char fill) {
  return *AesGcm::Create(SecretBytes(std::string(AesGcm::kKeySize, fill)));
}

TEST(AesGcmTest, RejectsKeysThatAreNot256Bits) {
  EXPECT_THAT(AesGcm::Create(SecretBytes(std::string(16, 'k'))),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(AesGcmTest, OpenReturnsWhatSealSealed) {
  auto key = MakeKey('k');
  auto sealed = key->Seal("card data", "aad");
  ASSERT_THAT(sealed, IsOk());
  EXPECT_EQ(sealed->size(), 9 + AesGcm::kOverhead);
  auto opened = key->Open(*sealed, "aad");
  ASSERT_THAT(opened, IsOk());
  EXPECT_EQ(opened->view(), "card data");
}

TEST(AesGcmTest, NoncesAreFreshPerSeal) {
  auto key = MakeKey('k');
  std::set<std::string> nonces;
  for (int i = 0; i < 1000; ++i) {
    nonces.insert(key->Seal("same", "aad")->substr(0, AesGcm::kNonceSize));
  }
  EXPECT_EQ(nonces.size(), 1000u);
}

TEST(AesGcmTest, OpenFailsForWrongAadWrongKeyOrChangedByte) {
  auto key = MakeKey('k');
  std::string sealed = *key->Seal("card data", "aad");
  EXPECT_THAT(key->Open(sealed, "aae"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(MakeKey('j')->Open(sealed, "aad"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  for (size_t i = 0; i < sealed.size(); ++i) {
    std::string changed = sealed;
    changed[i] ^= 0x01;
    EXPECT_THAT(key->Open(changed, "aad"),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << "byte " << i;
  }
  EXPECT_THAT(key->Open(sealed.substr(0, 10), "aad"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(AesGcmTest, ReusedContextsStartEveryMessageAfresh) {
  auto key = MakeKey('k');
  const std::string a = *key->Seal("first message", "aad-1");
  const std::string b = *key->Seal("second, longer message", "aad-2");
  // A failed open leaves no state behind in the context it used.
  EXPECT_THAT(key->Open(a, "aad-2"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(key->Open(b, "aad-2")->view(), "second, longer message");
  EXPECT_EQ(key->Open(a, "aad-1")->view(), "first message");
  // A fresh instance (fresh contexts) reads what reused contexts sealed.
  auto fresh = MakeKey('k');
  EXPECT_EQ(fresh->Open(b, "aad-2")->view(), "second, longer message");
  EXPECT_EQ(key->Open(*fresh->Seal("third", "aad-3"), "aad-3")->view(),
            "third");
}

TEST(AesGcmTest, ConcurrentCallsEachUseAWholeContext) {
  auto key = MakeKey('k');
  auto reader = MakeKey('k');
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0;
       t < 2 * static_cast<int>(ContextPool<std::unique_ptr<int>>::kMaxKept);
       ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        const std::string plain = absl::StrCat("card ", t, "/", i);
        const std::string aad = absl::StrCat("aad ", i);
        absl::StatusOr<std::string> sealed = key->Seal(plain, aad);
        if (!sealed.ok() || key->Open(*sealed, aad)->view() != plain ||
            reader->Open(*sealed, aad)->view() != plain ||
            key->Open(*sealed, "other").ok()) {
          ++failures;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(AesGcmTest, RefusesEmptyAad) {
  EXPECT_THAT(MakeKey('k')->Seal("x", ""),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace cardvault::crypto
