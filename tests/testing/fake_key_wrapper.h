// A KeyWrapper in process memory, for unit tests that need keys to be made,
// wrapped and rewrapped (rotation) without an HSM: each "KEK" is a random
// in-memory AES-256-GCM key, and "wrapping" is sealing under it. Integration
// tests use the real PKCS#11 wrapper.
#ifndef CARDVAULT_TESTS_TESTING_FAKE_KEY_WRAPPER_H_
#define CARDVAULT_TESTS_TESTING_FAKE_KEY_WRAPPER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "absl/synchronization/mutex.h"
#include "hsm/key_wrapper.h"
#include "server/crypto/aes_gcm.h"
#include "server/crypto/random.h"

namespace cardvault::testing {

class FakeKeyWrapper : public hsm::KeyWrapper {
 public:
  // With the KEK `kek` already in the "HSM" (empty: none).
  explicit FakeKeyWrapper(absl::string_view kek = "fake-kek") {
    if (!kek.empty()) (void)CreateKek(kek);
  }

  // While set, every call fails as a lost HSM session would.
  void Fail(bool fail) { fail_ = fail; }
  // Every call from the `n`-th on (counting from 0 now) fails: a crash at
  // that point, as far as the HSM is concerned. Negative: never.
  void FailFromCall(int64_t n) {
    calls_ = 0;
    fail_from_ = n;
  }
  int64_t calls() const { return calls_.load(); }
  int generated() const { return generated_.load(); }
  std::set<std::string> keks() const {
    absl::MutexLock lock(&mu_);
    std::set<std::string> out;
    for (const auto& [label, kek] : keks_) out.insert(label);
    return out;
  }

  absl::StatusOr<std::string> GenerateWrappedKey(
      absl::string_view kek) const override {
    if (absl::Status s = Call(); !s.ok()) return s;
    crypto::SecretBytes key(crypto::AesGcm::kKeySize);
    if (absl::Status s =
            crypto::FillRandom(absl::MakeSpan(key.data(), key.size()));
        !s.ok()) {
      return s;
    }
    ++generated_;
    absl::MutexLock lock(&mu_);
    auto it = keks_.find(std::string(kek));
    if (it == keks_.end()) return absl::NotFoundError("no such KEK");
    return it->second->Seal(key.view(), "fake-wrap");
  }
  absl::StatusOr<crypto::SecretBytes> UnwrapKey(
      absl::string_view kek, absl::string_view wrapped) const override {
    if (absl::Status s = Call(); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    auto it = keks_.find(std::string(kek));
    if (it == keks_.end()) return absl::NotFoundError("no such KEK");
    return it->second->Open(wrapped, "fake-wrap");
  }
  absl::StatusOr<std::string> RewrapKey(absl::string_view from,
                                        absl::string_view wrapped,
                                        absl::string_view to) const override {
    absl::StatusOr<crypto::SecretBytes> key = UnwrapKey(from, wrapped);
    if (!key.ok()) return key.status();
    absl::MutexLock lock(&mu_);
    auto it = keks_.find(std::string(to));
    if (it == keks_.end()) return absl::NotFoundError("no such KEK");
    return it->second->Seal(key->view(), "fake-wrap");
  }
  absl::Status CheckKek(absl::string_view label) const override {
    if (absl::Status s = Call(); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    return keks_.contains(std::string(label))
               ? absl::OkStatus()
               : absl::NotFoundError("no such KEK");
  }
  absl::Status CreateKek(absl::string_view label) const override {
    if (absl::Status s = Call(); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    if (keks_.contains(std::string(label))) return absl::OkStatus();
    crypto::SecretBytes kek(crypto::AesGcm::kKeySize);
    (void)crypto::FillRandom(absl::MakeSpan(kek.data(), kek.size()));
    keks_[std::string(label)] = *crypto::AesGcm::Create(std::move(kek));
    return absl::OkStatus();
  }
  // "In the HSM" here means an AesGcm over the unwrapped key.
  absl::StatusOr<std::unique_ptr<crypto::Aead>> NewAeadInHsm(
      hsm::WrappedKeySource source) const override {
    absl::StatusOr<hsm::WrappedKeyRef> ref = source();
    if (!ref.ok()) return ref.status();
    absl::StatusOr<crypto::SecretBytes> key =
        UnwrapKey(ref->kek_label, ref->wrapped);
    if (!key.ok()) return key.status();
    absl::StatusOr<std::unique_ptr<crypto::AesGcm>> aead =
        crypto::AesGcm::Create(*std::move(key));
    if (!aead.ok()) return aead.status();
    return std::unique_ptr<crypto::Aead>(*std::move(aead));
  }
  absl::Status DestroyKek(absl::string_view label) const override {
    if (absl::Status s = Call(); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    keks_.erase(std::string(label));
    return absl::OkStatus();
  }

 private:
  absl::Status Call() const {
    const int64_t n = calls_++;
    if (fail_ || (fail_from_ >= 0 && n >= fail_from_)) {
      return absl::UnavailableError("injected: HSM unavailable");
    }
    return absl::OkStatus();
  }

  mutable absl::Mutex mu_;
  mutable std::map<std::string, std::unique_ptr<crypto::AesGcm>> keks_
      ABSL_GUARDED_BY(mu_);
  std::atomic<bool> fail_{false};
  std::atomic<int64_t> fail_from_{-1};
  mutable std::atomic<int64_t> calls_{0};
  mutable std::atomic<int> generated_{0};
};

}  // namespace cardvault::testing

#endif  // CARDVAULT_TESTS_TESTING_FAKE_KEY_WRAPPER_H_
