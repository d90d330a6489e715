#include "server/vault/key_ring.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/vault/wrapped_keys.h"

namespace cardvault::vault {

std::string DataKeyId(uint32_t version) {
  return WrappedKeyId(kDataKeyPrefix, version);
}

absl::StatusOr<MacKey> LoadMacKey(const storage::KeyStore* keys,
                                  const hsm::KeyWrapper* wrapper,
                                  absl::string_view prefix) {
  bool created = false;
  absl::StatusOr<std::map<uint32_t, crypto::SecretBytes>> plain =
      LoadWrappedKeys(keys, wrapper, prefix, /*create_first=*/true, &created);
  if (!plain.ok()) return plain.status();
  auto newest = plain->rbegin();
  absl::StatusOr<std::unique_ptr<crypto::HmacSha256>> mac =
      crypto::HmacSha256::Create(std::move(newest->second));
  if (!mac.ok()) return mac.status();
  return MacKey{newest->first, *std::move(mac), created};
}

absl::StatusOr<std::unique_ptr<KeyRing>> KeyRing::Load(
    const storage::KeyStore* keys, const hsm::KeyWrapper* wrapper,
    Options options, bool* created_first_key) {
  absl::StatusOr<std::map<uint32_t, crypto::SecretBytes>> plain =
      LoadWrappedKeys(keys, wrapper, kDataKeyPrefix, options.create_first_key,
                      created_first_key);
  if (!plain.ok()) return plain.status();
  return FromKeys(*std::move(plain));
}

absl::StatusOr<std::unique_ptr<KeyRing>> KeyRing::FromKeys(
    std::map<uint32_t, crypto::SecretBytes> keys) {
  if (keys.empty()) {
    return absl::FailedPreconditionError("no data-encryption key available");
  }
  std::map<uint32_t, std::unique_ptr<crypto::AesGcm>> ring;
  for (auto& [version, key] : keys) {
    absl::StatusOr<std::unique_ptr<crypto::AesGcm>> aead =
        crypto::AesGcm::Create(std::move(key));
    if (!aead.ok()) return aead.status();
    ring.emplace(version, *std::move(aead));
  }
  return std::unique_ptr<KeyRing>(new KeyRing(std::move(ring)));
}

KeyRing::KeyRing(std::map<uint32_t, std::unique_ptr<crypto::AesGcm>> keys)
    : keys_(std::move(keys)), primary_version_(keys_.rbegin()->first) {}

absl::StatusOr<const crypto::AesGcm*> KeyRing::Get(uint32_t version) const {
  auto it = keys_.find(version);
  if (it == keys_.end()) {
    return absl::NotFoundError(
        absl::StrCat("no data key of version ", version));
  }
  return it->second.get();
}

}  // namespace cardvault::vault
