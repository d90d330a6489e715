#include "server/crypto/aes_gcm.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
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

TEST(AesGcmTest, RefusesEmptyAad) {
  EXPECT_THAT(MakeKey('k')->Seal("x", ""),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace cardvault::crypto
