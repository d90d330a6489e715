#include "server/vault/wrapped_keys.h"

#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/util/big_endian.h"

namespace cardvault::vault {
namespace {

constexpr size_t kV1HeaderBytes = 7;
constexpr size_t kV2HeaderBytes = 23;
constexpr size_t kDestroyedBytes = 13;

std::string Encode(uint32_t version, absl::Time created,
                   absl::Time cryptoperiod_end, absl::string_view kek_label,
                   absl::string_view wrapped) {
  std::string out;
  out.push_back(static_cast<char>(kWrappedKeyFormatV2));
  util::AppendBigEndian32(version, &out);
  out.push_back(static_cast<char>(kWrapMechanismAesKeyWrapPad));
  util::AppendUnixMillis(created, &out);
  util::AppendUnixMillis(cryptoperiod_end, &out);
  out.push_back(static_cast<char>(kek_label.size()));
  absl::StrAppend(&out, kek_label, wrapped);
  return out;
}

struct WrappedKey {
  uint32_t version = 0;
  absl::Time created = absl::InfinitePast();
  absl::Time cryptoperiod_end = absl::InfiniteFuture();
  bool destroyed = false;
  absl::Time destroyed_at = absl::InfinitePast();
  absl::string_view kek_label;
  absl::string_view wrapped;
};

absl::StatusOr<WrappedKey> Decode(absl::string_view prefix,
                                  absl::string_view id,
                                  absl::string_view record) {
  const std::string where = absl::StrCat("wrapped key ", id);
  const uint8_t format = record.empty() ? 0 : static_cast<uint8_t>(record[0]);
  WrappedKey k;
  size_t header = 0;
  if (format == kDestroyedKeyFormat && record.size() == kDestroyedBytes) {
    k.destroyed = true;
    k.destroyed_at =
        util::ReadUnixMillis(record.substr(5, 8), absl::InfinitePast());
  } else if (format == kWrappedKeyFormatV1 && record.size() > kV1HeaderBytes) {
    header = kV1HeaderBytes;
  } else if (format == kWrappedKeyFormatV2 && record.size() > kV2HeaderBytes) {
    header = kV2HeaderBytes;
    k.created = util::ReadUnixMillis(record.substr(6, 8), absl::InfinitePast());
    k.cryptoperiod_end =
        util::ReadUnixMillis(record.substr(14, 8), absl::InfiniteFuture());
  } else {
    return absl::DataLossError(absl::StrCat(where, ": unknown format"));
  }
  k.version = util::ReadBigEndian32(record.substr(1, 4));
  if (WrappedKeyId(prefix, k.version) != id) {
    return absl::DataLossError(absl::StrCat(where, ": version mismatch"));
  }
  if (k.destroyed) return k;
  if (static_cast<uint8_t>(record[5]) != kWrapMechanismAesKeyWrapPad) {
    return absl::DataLossError(absl::StrCat(where, ": unknown mechanism"));
  }
  const size_t label_len = static_cast<uint8_t>(record[header - 1]);
  if (label_len == 0 || label_len > kMaxKekLabelBytes ||
      record.size() <= header + label_len ||
      record.size() - header - label_len > kMaxWrappedKeyBytes) {
    return absl::DataLossError(absl::StrCat(where, ": bad lengths"));
  }
  k.kek_label = record.substr(header, label_len);
  k.wrapped = record.substr(header + label_len);
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

// Attempts to store a new key while KEK rotations change the state.
constexpr int kCreateAttempts = 5;

// "dek/00000001" -> "dek/".
absl::string_view PrefixOf(absl::string_view id) {
  const size_t slash = id.rfind('/');
  return slash == absl::string_view::npos ? absl::string_view()
                                          : id.substr(0, slash + 1);
}

// Reads where the key `id` is wrapped now, for an AEAD in the HSM that may
// need to unwrap it again (in a new session, after a KEK rotation).
hsm::WrappedKeySource SourceOf(const storage::KeyStore* keys, std::string id) {
  return [keys, id = std::move(id)]() -> absl::StatusOr<hsm::WrappedKeyRef> {
    absl::StatusOr<std::string> record = keys->GetKey(id);
    if (!record.ok()) return record.status();
    absl::StatusOr<WrappedKey> k = Decode(PrefixOf(id), id, *record);
    if (!k.ok()) return k.status();
    if (k->destroyed) {
      return absl::FailedPreconditionError(
          absl::StrCat("key ", id, " is destroyed"));
    }
    return hsm::WrappedKeyRef{std::string(k->kek_label),
                              std::string(k->wrapped)};
  };
}

// Makes `stored` usable per `custody` from its wrapped form.
absl::Status Load(const KekManager* kek, absl::string_view id,
                  absl::string_view label, absl::string_view wrapped,
                  KeyCustody custody, StoredKey* stored) {
  if (custody == KeyCustody::kHsm) {
    absl::StatusOr<std::unique_ptr<crypto::Aead>> aead =
        kek->wrapper()->NewAeadInHsm(SourceOf(kek->keys(), std::string(id)));
    if (!aead.ok()) return aead.status();
    stored->in_hsm = *std::move(aead);
    return absl::OkStatus();
  }
  absl::StatusOr<crypto::SecretBytes> key =
      kek->wrapper()->UnwrapKey(label, wrapped);
  if (!key.ok()) return key.status();
  stored->key = *std::move(key);
  return absl::OkStatus();
}

}  // namespace

std::string WrappedKeyId(absl::string_view prefix, uint32_t version) {
  return absl::StrFormat("%s%08x", prefix, version);
}

std::string DestroyedKeyRecord(uint32_t version, absl::Time destroyed_at) {
  std::string out(1, static_cast<char>(kDestroyedKeyFormat));
  util::AppendBigEndian32(version, &out);
  util::AppendUnixMillis(destroyed_at, &out);
  return out;
}

absl::StatusOr<std::map<uint32_t, StoredKey>> LoadStoredKeys(
    const KekManager* kek, absl::string_view prefix, KeyCustody custody,
    const std::function<bool(uint32_t version)>& wanted) {
  absl::StatusOr<KekState> state = kek->State();
  if (!state.ok()) return state.status();
  auto records = ListPrefix(kek->keys(), prefix);
  if (!records.ok()) return records.status();
  std::map<uint32_t, StoredKey> out;
  for (auto& [id, record] : *records) {
    absl::StatusOr<WrappedKey> k = Decode(prefix, id, record);
    if (!k.ok()) return k.status();
    if (!k->destroyed && wanted && !wanted(k->version)) continue;
    StoredKey stored;
    stored.version = k->version;
    stored.created = k->created;
    stored.cryptoperiod_end = k->cryptoperiod_end;
    stored.destroyed = k->destroyed;
    stored.destroyed_at = k->destroyed_at;
    if (!k->destroyed) {
      if (!state->Names(k->kek_label)) {
        return absl::FailedPreconditionError(
            absl::StrCat("key ", id, " is wrapped under KEK \"", k->kek_label,
                         "\", not the vault's \"", state->current, "\""));
      }
      if (absl::Status s =
              Load(kek, id, k->kek_label, k->wrapped, custody, &stored);
          !s.ok()) {
        return absl::Status(s.code(), absl::StrCat("cannot unwrap key ", id,
                                                   ": ", s.message()));
      }
    }
    stored.record = std::move(record);
    out.emplace(stored.version, std::move(stored));
  }
  return out;
}

absl::StatusOr<StoredKey> CreateStoredKey(const KekManager* kek,
                                          absl::string_view prefix,
                                          uint32_t version, absl::Time created,
                                          absl::Time cryptoperiod_end,
                                          KeyCustody custody) {
  // Stored with millisecond times, so what is returned equals a reload.
  created = absl::FromUnixMillis(absl::ToUnixMillis(created));
  if (cryptoperiod_end != absl::InfiniteFuture()) {
    cryptoperiod_end =
        absl::FromUnixMillis(absl::ToUnixMillis(cryptoperiod_end));
  }
  const std::string id = WrappedKeyId(prefix, version);
  for (int attempt = 1;; ++attempt) {
    absl::StatusOr<KekState> state = kek->State();
    if (!state.ok()) return state.status();
    const std::string& label = state->wrapping_label();
    absl::StatusOr<std::string> wrapped =
        kek->wrapper()->GenerateWrappedKey(label);
    if (!wrapped.ok()) return wrapped.status();
    std::string record =
        Encode(version, created, cryptoperiod_end, label, *wrapped);
    // Unwrapped before it is stored: a key the HSM cannot unwrap is never
    // kept. (In the HSM, from the record about to be written.)
    StoredKey stored;
    if (custody == KeyCustody::kHostMemory) {
      if (absl::Status s = Load(kek, id, label, *wrapped, custody, &stored);
          !s.ok()) {
        return s;
      }
    }
    // Written only if the KEK state is still the one the KEK was chosen
    // from, so a rotation never misses a key (kek_manager.h).
    absl::Status written = kek->keys()->UpdateKeys(
        {{.key_id = std::string(kKekStateId),
          .expected = state->record,
          .record = std::nullopt},
         {.key_id = id, .expected = std::nullopt, .record = record}});
    if (absl::IsFailedPrecondition(written)) {
      if (kek->keys()->GetKey(id).ok()) {
        return absl::AlreadyExistsError(absl::StrCat("key ", id, " exists"));
      }
      if (attempt < kCreateAttempts) continue;
    }
    if (!written.ok()) return written;
    if (custody == KeyCustody::kHsm) {
      if (absl::Status s = Load(kek, id, label, *wrapped, custody, &stored);
          !s.ok()) {
        return s;
      }
    }
    stored.version = version;
    stored.created = created;
    stored.cryptoperiod_end = cryptoperiod_end;
    stored.record = std::move(record);
    return stored;
  }
}

absl::StatusOr<std::optional<std::string>> KekLabelOf(
    absl::string_view id, absl::string_view record) {
  absl::StatusOr<WrappedKey> k = Decode(PrefixOf(id), id, record);
  if (!k.ok()) return k.status();
  if (k->destroyed) return std::nullopt;
  return std::string(k->kek_label);
}

absl::StatusOr<std::string> RewrapKeyRecord(absl::string_view id,
                                            absl::string_view record,
                                            const hsm::KeyWrapper& wrapper,
                                            absl::string_view to) {
  absl::StatusOr<WrappedKey> k = Decode(PrefixOf(id), id, record);
  if (!k.ok()) return k.status();
  if (k->destroyed) {
    return absl::FailedPreconditionError(
        absl::StrCat("key ", id, " is destroyed"));
  }
  if (to.empty() || to.size() > kMaxKekLabelBytes) {
    return absl::InvalidArgumentError("KEK label must be 1 to 64 bytes");
  }
  absl::StatusOr<std::string> rewrapped =
      wrapper.RewrapKey(k->kek_label, k->wrapped, to);
  if (!rewrapped.ok()) return rewrapped.status();
  return Encode(k->version, k->created, k->cryptoperiod_end, to, *rewrapped);
}

absl::StatusOr<std::map<uint32_t, crypto::SecretBytes>> LoadWrappedKeys(
    const KekManager* kek, absl::string_view prefix, bool create_first,
    bool* created) {
  if (created != nullptr) *created = false;
  absl::StatusOr<std::map<uint32_t, StoredKey>> stored =
      LoadStoredKeys(kek, prefix);
  if (!stored.ok()) return stored.status();
  if (stored->empty() && create_first) {
    absl::StatusOr<StoredKey> first =
        CreateStoredKey(kek, prefix, 1, absl::Now(), absl::InfiniteFuture());
    if (absl::IsAlreadyExists(first.status())) {
      // Another node sharing the store created it first: use that one.
      stored = LoadStoredKeys(kek, prefix);
      if (!stored.ok()) return stored.status();
    } else {
      if (!first.ok()) return first.status();
      if (created != nullptr) *created = true;
      stored->emplace(1, *std::move(first));
    }
  }
  std::map<uint32_t, crypto::SecretBytes> plain;
  for (auto& [version, key] : *stored) {
    if (!key.destroyed) plain.emplace(version, std::move(key.key));
  }
  return plain;
}

}  // namespace cardvault::vault
