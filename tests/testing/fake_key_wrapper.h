// A KeyWrapper in process memory, for unit tests that need keys to be made
// and wrapped (rotation) without an HSM: "wrapping" is AES-256-GCM under a
// random in-memory KEK. Integration tests use the real PKCS#11 wrapper.
#ifndef CARDVAULT_TESTS_TESTING_FAKE_KEY_WRAPPER_H_
#define CARDVAULT_TESTS_TESTING_FAKE_KEY_WRAPPER_H_

#include <atomic>
#include <memory>
#include <string>

#include "hsm/key_wrapper.h"
#include "server/crypto/aes_gcm.h"
#include "server/crypto/random.h"

namespace cardvault::testing {

class FakeKeyWrapper : public hsm::KeyWrapper {
 public:
  FakeKeyWrapper() {
    crypto::SecretBytes kek(crypto::AesGcm::kKeySize);
    (void)crypto::FillRandom(absl::MakeSpan(kek.data(), kek.size()));
    kek_ = *crypto::AesGcm::Create(std::move(kek));
  }

  // While set, every call fails as a lost HSM session would.
  void Fail(bool fail) { fail_ = fail; }
  int generated() const { return generated_.load(); }

  absl::StatusOr<std::string> GenerateWrappedDataKey() const override {
    if (fail_) return absl::UnavailableError("injected: HSM unavailable");
    crypto::SecretBytes key(crypto::AesGcm::kKeySize);
    if (absl::Status s =
            crypto::FillRandom(absl::MakeSpan(key.data(), key.size()));
        !s.ok()) {
      return s;
    }
    ++generated_;
    return kek_->Seal(key.view(), "fake-wrap");
  }
  absl::StatusOr<crypto::SecretBytes> UnwrapDataKey(
      absl::string_view wrapped) const override {
    if (fail_) return absl::UnavailableError("injected: HSM unavailable");
    return kek_->Open(wrapped, "fake-wrap");
  }
  absl::string_view kek_label() const override { return "fake-kek"; }

 private:
  std::unique_ptr<crypto::AesGcm> kek_;
  std::atomic<bool> fail_{false};
  mutable std::atomic<int> generated_{0};
};

}  // namespace cardvault::testing

#endif  // CARDVAULT_TESTS_TESTING_FAKE_KEY_WRAPPER_H_
