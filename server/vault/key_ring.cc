#include "server/vault/key_ring.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/util/big_endian.h"

namespace cardvault::vault {
namespace {

constexpr absl::string_view kDataKeyIdPrefix = "dek/";
constexpr size_t kHeaderBytes = 7;

std::string EncodeWrappedKey(uint32_t version, absl::string_view kek_label,
                             absl::string_view wrapped) {
  std::string out;
  out.push_back(static_cast<char>(kWrappedKeyFormatV1));
  util::AppendBigEndian32(version, &out);
  out.push_back(static_cast<char>(kWrapMechanismAesKeyWrapPad));
  out.push_back(static_cast<char>(kek_label.size()));
  absl::StrAppend(&out, kek_label, wrapped);
  return out;
}

struct WrappedKey {
  uint32_t version;
  absl::string_view kek_label;
  absl::string_view wrapped;
};

absl::StatusOr<WrappedKey> DecodeWrappedKey(absl::string_view id,
                                            absl::string_view record) {
  const std::string where = absl::StrCat("wrapped key ", id);
  if (record.size() < kHeaderBytes ||
      static_cast<uint8_t>(record[0]) != kWrappedKeyFormatV1) {
    return absl::DataLossError(absl::StrCat(where, ": unknown format"));
  }
  WrappedKey k;
  k.version = util::ReadBigEndian32(record.substr(1, 4));
  if (DataKeyId(k.version) != id) {
    return absl::DataLossError(absl::StrCat(where, ": version mismatch"));
  }
  if (static_cast<uint8_t>(record[5]) != kWrapMechanismAesKeyWrapPad) {
    return absl::DataLossError(absl::StrCat(where, ": unknown mechanism"));
  }
  const size_t label_len = static_cast<uint8_t>(record[6]);
  if (label_len == 0 || label_len > kMaxKekLabelBytes ||
      record.size() <= kHeaderBytes + label_len ||
      record.size() - kHeaderBytes - label_len > kMaxWrappedKeyBytes) {
    return absl::DataLossError(absl::StrCat(where, ": bad lengths"));
  }
  k.kek_label = record.substr(kHeaderBytes, label_len);
  k.wrapped = record.substr(kHeaderBytes + label_len);
  return k;
}

}  // namespace

std::string DataKeyId(uint32_t version) {
  return absl::StrFormat("%s%08x", kDataKeyIdPrefix, version);
}

absl::StatusOr<std::unique_ptr<KeyRing>> KeyRing::Load(
    const storage::KeyStore* keys, const hsm::KeyWrapper* wrapper,
    Options options) {
  if (wrapper->kek_label().empty() ||
      wrapper->kek_label().size() > kMaxKekLabelBytes) {
    return absl::InvalidArgumentError("KEK label must be 1 to 64 bytes");
  }
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> records =
      keys->ListKeys();
  if (!records.ok()) return records.status();
  if (records->empty() && options.create_first_key) {
    absl::StatusOr<std::string> wrapped = wrapper->GenerateWrappedDataKey();
    if (!wrapped.ok()) return wrapped.status();
    if (absl::Status s = keys->InsertKey(
            DataKeyId(1), EncodeWrappedKey(1, wrapper->kek_label(), *wrapped));
        !s.ok()) {
      return s;
    }
    records = keys->ListKeys();
    if (!records.ok()) return records.status();
  }
  std::map<uint32_t, crypto::SecretBytes> plain;
  for (const auto& [id, record] : *records) {
    if (!absl::StartsWith(id, kDataKeyIdPrefix)) continue;
    absl::StatusOr<WrappedKey> k = DecodeWrappedKey(id, record);
    if (!k.ok()) return k.status();
    if (k->kek_label != wrapper->kek_label()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "data key ", id, " is wrapped under KEK \"", k->kek_label,
          "\", not the configured \"", wrapper->kek_label(), "\""));
    }
    absl::StatusOr<crypto::SecretBytes> key =
        wrapper->UnwrapDataKey(k->wrapped);
    if (!key.ok()) {
      return absl::Status(key.status().code(),
                          absl::StrCat("cannot unwrap data key ", id, ": ",
                                       key.status().message()));
    }
    plain.emplace(k->version, *std::move(key));
  }
  return FromKeys(std::move(plain));
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
