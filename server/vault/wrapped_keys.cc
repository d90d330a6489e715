#include "server/vault/wrapped_keys.h"

#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/util/big_endian.h"

namespace cardvault::vault {
namespace {

constexpr size_t kHeaderBytes = 7;

std::string Encode(uint32_t version, absl::string_view kek_label,
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

absl::StatusOr<WrappedKey> Decode(absl::string_view prefix,
                                  absl::string_view id,
                                  absl::string_view record) {
  const std::string where = absl::StrCat("wrapped key ", id);
  if (record.size() < kHeaderBytes ||
      static_cast<uint8_t>(record[0]) != kWrappedKeyFormatV1) {
    return absl::DataLossError(absl::StrCat(where, ": unknown format"));
  }
  WrappedKey k;
  k.version = util::ReadBigEndian32(record.substr(1, 4));
  if (WrappedKeyId(prefix, k.version) != id) {
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

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ListPrefix(
    const storage::KeyStore* keys, absl::string_view prefix) {
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> all =
      keys->ListKeys();
  if (!all.ok()) return all.status();
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& entry : *all) {
    if (absl::StartsWith(entry.first, prefix)) out.push_back(std::move(entry));
  }
  return out;
}

}  // namespace

std::string WrappedKeyId(absl::string_view prefix, uint32_t version) {
  return absl::StrFormat("%s%08x", prefix, version);
}

absl::StatusOr<std::map<uint32_t, crypto::SecretBytes>> LoadWrappedKeys(
    const storage::KeyStore* keys, const hsm::KeyWrapper* wrapper,
    absl::string_view prefix, bool create_first, bool* created) {
  if (created != nullptr) *created = false;
  if (wrapper->kek_label().empty() ||
      wrapper->kek_label().size() > kMaxKekLabelBytes) {
    return absl::InvalidArgumentError("KEK label must be 1 to 64 bytes");
  }
  auto records = ListPrefix(keys, prefix);
  if (!records.ok()) return records.status();
  if (records->empty() && create_first) {
    absl::StatusOr<std::string> wrapped = wrapper->GenerateWrappedDataKey();
    if (!wrapped.ok()) return wrapped.status();
    if (absl::Status s = keys->InsertKey(
            WrappedKeyId(prefix, 1), Encode(1, wrapper->kek_label(), *wrapped));
        !s.ok()) {
      return s;
    }
    if (created != nullptr) *created = true;
    records = ListPrefix(keys, prefix);
    if (!records.ok()) return records.status();
  }
  std::map<uint32_t, crypto::SecretBytes> plain;
  for (const auto& [id, record] : *records) {
    absl::StatusOr<WrappedKey> k = Decode(prefix, id, record);
    if (!k.ok()) return k.status();
    if (k->kek_label != wrapper->kek_label()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "key ", id, " is wrapped under KEK \"", k->kek_label,
          "\", not the configured \"", wrapper->kek_label(), "\""));
    }
    absl::StatusOr<crypto::SecretBytes> key =
        wrapper->UnwrapDataKey(k->wrapped);
    if (!key.ok()) {
      return absl::Status(
          key.status().code(),
          absl::StrCat("cannot unwrap key ", id, ": ", key.status().message()));
    }
    plain.emplace(k->version, *std::move(key));
  }
  return plain;
}

}  // namespace cardvault::vault
