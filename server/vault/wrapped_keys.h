// Keys stored only wrapped under the HSM's KEK, in the "keys" column family.
//
// Key id: a purpose prefix ("dek/" data keys, "audit-mac/" audit chain key,
// "pan-index/" deterministic-token and idempotency index key, "fingerprint/"
// card fingerprint key) followed by 8 lowercase hex digits of the version.
//
// Wrapped-key record, byte by byte:
//   offset  size  field
//   0       1     record format version, kWrappedKeyFormatV1 = 0x01
//   1       4     key version, uint32 big-endian (equals the key id's)
//   5       1     wrap mechanism, 0x01 = CKM_AES_KEY_WRAP_PAD (RFC 5649)
//   6       1     KEK label length K, 1..kMaxKekLabelBytes
//   7       K     KEK label (CKA_LABEL of the wrapping key)
//   7+K     W     wrapped key, W = rest of record, 1..kMaxWrappedKeyBytes
#ifndef CARDVAULT_SERVER_VAULT_WRAPPED_KEYS_H_
#define CARDVAULT_SERVER_VAULT_WRAPPED_KEYS_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hsm/key_wrapper.h"
#include "server/crypto/secret_bytes.h"
#include "server/storage/token_store.h"

namespace cardvault::vault {

inline constexpr uint8_t kWrappedKeyFormatV1 = 0x01;
inline constexpr uint8_t kWrapMechanismAesKeyWrapPad = 0x01;
inline constexpr size_t kMaxKekLabelBytes = 64;
inline constexpr size_t kMaxWrappedKeyBytes = 512;

inline constexpr absl::string_view kDataKeyPrefix = "dek/";
inline constexpr absl::string_view kAuditKeyPrefix = "audit-mac/";
inline constexpr absl::string_view kPanIndexKeyPrefix = "pan-index/";
inline constexpr absl::string_view kFingerprintKeyPrefix = "fingerprint/";

// "<prefix><8 hex digits>".
std::string WrappedKeyId(absl::string_view prefix, uint32_t version);

// Unwraps every key stored under `prefix`, by version. When there is none
// and `create_first` is set, first generates version 1 in the HSM and stores
// it wrapped (and sets `*created`, when given). Fails if any record is
// malformed, was wrapped under another KEK, or does not unwrap.
absl::StatusOr<std::map<uint32_t, crypto::SecretBytes>> LoadWrappedKeys(
    const storage::KeyStore* keys, const hsm::KeyWrapper* wrapper,
    absl::string_view prefix, bool create_first, bool* created = nullptr);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_WRAPPED_KEYS_H_
