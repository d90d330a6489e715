// Keys stored only wrapped under the HSM's KEK, in the "keys" column family.
//
// Key id: a purpose prefix ("dek/" data keys, "audit-mac/" audit chain key,
// "pan-index/" deterministic-token and idempotency index key, "fingerprint/"
// card fingerprint key) followed by 8 lowercase hex digits of the version.
//
// Wrapped-key record, byte by byte (format 2; format 1, still read, had no
// times: created reads as unknown, no cryptoperiod end):
//   offset  size  field
//   0       1     record format version, kWrappedKeyFormatV2 = 0x02
//   1       4     key version, uint32 big-endian (equals the key id's)
//   5       1     wrap mechanism, 0x01 = CKM_AES_KEY_WRAP_PAD (RFC 5649)
//   6       8     created, Unix milliseconds, uint64 big-endian
//   14      8     cryptoperiod end, Unix milliseconds; 0 = none
//   22      1     KEK label length K, 1..kMaxKekLabelBytes
//   23      K     KEK label (CKA_LABEL of the wrapping key)
//   23+K    W     wrapped key, W = rest of record, 1..kMaxWrappedKeyBytes
//
// Destroyed-key record (replaces the wrapped key; nothing left to unwrap):
//   0       1     kDestroyedKeyFormat = 0x7f
//   1       4     key version, uint32 big-endian
//   5       8     destroyed, Unix milliseconds, uint64 big-endian
#ifndef CARDVAULT_SERVER_VAULT_WRAPPED_KEYS_H_
#define CARDVAULT_SERVER_VAULT_WRAPPED_KEYS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "hsm/key_wrapper.h"
#include "server/crypto/aead.h"
#include "server/crypto/secret_bytes.h"
#include "server/storage/token_store.h"
#include "server/vault/kek_manager.h"

namespace cardvault::vault {

inline constexpr uint8_t kWrappedKeyFormatV1 = 0x01;
inline constexpr uint8_t kWrappedKeyFormatV2 = 0x02;
inline constexpr uint8_t kDestroyedKeyFormat = 0x7f;
inline constexpr uint8_t kWrapMechanismAesKeyWrapPad = 0x01;
inline constexpr size_t kMaxWrappedKeyBytes = 512;

inline constexpr absl::string_view kDataKeyPrefix = "dek/";
inline constexpr absl::string_view kAuditKeyPrefix = "audit-mac/";
inline constexpr absl::string_view kPanIndexKeyPrefix = "pan-index/";
inline constexpr absl::string_view kFingerprintKeyPrefix = "fingerprint/";
// Authenticates dual-control operation records (operation_record.h).
inline constexpr absl::string_view kOperationMacKeyPrefix = "operation-mac/";

// "<prefix><8 hex digits>".
std::string WrappedKeyId(absl::string_view prefix, uint32_t version);

// Where a loaded key is usable: unwrapped into locked host memory (the
// default), or only inside the HSM (direct-HSM mode, data keys only).
enum class KeyCustody { kHostMemory, kHsm };

// A key as stored: unwrapped (unless destroyed), with its times and the
// exact record (for compare-and-set replacement).
struct StoredKey {
  uint32_t version = 0;
  absl::Time created = absl::InfinitePast();  // unknown for format 1
  absl::Time cryptoperiod_end = absl::InfiniteFuture();
  bool destroyed = false;
  absl::Time destroyed_at = absl::InfinitePast();
  std::string record;
  crypto::SecretBytes key;  // kHostMemory; empty when destroyed
  std::shared_ptr<const crypto::Aead> in_hsm;  // kHsm; null when destroyed
};

// Every key stored under `prefix`, by version, unwrapped in the HSM under
// the KEK each names. Fails if any live record is malformed, names a KEK the
// KEK state does not, or does not unwrap. With `wanted`, only the live keys
// whose version it accepts (and every destroyed one) are returned: a ring
// that already holds the others (KeyRing::Refresh).
absl::StatusOr<std::map<uint32_t, StoredKey>> LoadStoredKeys(
    const KekManager* kek, absl::string_view prefix,
    KeyCustody custody = KeyCustody::kHostMemory,
    const std::function<bool(uint32_t version)>& wanted = nullptr);

// Generates key `version` in the HSM and stores it, wrapped under the KEK
// the state names for new keys, under `prefix` with its times; returns what
// was stored (key unwrapped). ALREADY_EXISTS if the version is taken.
absl::StatusOr<StoredKey> CreateStoredKey(
    const KekManager* kek, absl::string_view prefix, uint32_t version,
    absl::Time created, absl::Time cryptoperiod_end,
    KeyCustody custody = KeyCustody::kHostMemory);

// The KEK label the key record `record` (stored under `id`) names; nullopt
// for a destroyed key. DATA_LOSS if malformed.
absl::StatusOr<std::optional<std::string>> KekLabelOf(absl::string_view id,
                                                      absl::string_view record);

// `record` with its key rewrapped, inside the HSM, under the KEK `to`; every
// other field unchanged.
absl::StatusOr<std::string> RewrapKeyRecord(absl::string_view id,
                                            absl::string_view record,
                                            const hsm::KeyWrapper& wrapper,
                                            absl::string_view to);

// The record that replaces a destroyed key's wrapped copy.
std::string DestroyedKeyRecord(uint32_t version, absl::Time destroyed_at);

// Unwraps every key stored under `prefix`, by version. When there is none
// and `create_first` is set, first generates version 1 in the HSM and stores
// it wrapped (and sets `*created`, when given). Fails if any record is
// malformed, was wrapped under another KEK, or does not unwrap.
absl::StatusOr<std::map<uint32_t, crypto::SecretBytes>> LoadWrappedKeys(
    const KekManager* kek, absl::string_view prefix, bool create_first,
    bool* created = nullptr);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_WRAPPED_KEYS_H_
