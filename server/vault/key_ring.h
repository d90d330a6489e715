// Data-encryption keys (DEKs) by version, held unwrapped only in locked,
// non-dumpable memory, and stored only wrapped under the HSM's KEK.
//
// Wrapped-key record, the value under key id "dek/" + 8 lowercase hex digits
// of the version (column family "keys"):
//   offset  size  field
//   0       1     record format version, kWrappedKeyFormatV1 = 0x01
//   1       4     key version, uint32 big-endian (equals the key id's)
//   5       1     wrap mechanism, 0x01 = CKM_AES_KEY_WRAP_PAD (RFC 5649)
//   6       1     KEK label length K, 1..kMaxKekLabelBytes
//   7       K     KEK label (CKA_LABEL of the wrapping key)
//   7+K     W     wrapped key, W = rest of record, 1..kMaxWrappedKeyBytes
//
// Thread safety: thread-safe; immutable after Load.
#ifndef CARDVAULT_SERVER_VAULT_KEY_RING_H_
#define CARDVAULT_SERVER_VAULT_KEY_RING_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hsm/key_wrapper.h"
#include "server/crypto/aes_gcm.h"
#include "server/storage/token_store.h"

namespace cardvault::vault {

inline constexpr uint8_t kWrappedKeyFormatV1 = 0x01;
inline constexpr uint8_t kWrapMechanismAesKeyWrapPad = 0x01;
inline constexpr size_t kMaxKekLabelBytes = 64;
inline constexpr size_t kMaxWrappedKeyBytes = 512;

// Key id under which the wrapped DEK of `version` is stored.
std::string DataKeyId(uint32_t version);

class KeyRing {
 public:
  struct Options {
    // Generate DEK version 1 (in the HSM, stored wrapped) when the store has
    // no data key yet, i.e. on the first start of a new vault.
    bool create_first_key = true;
  };

  // Reads every wrapped DEK from `keys`, unwraps each through `wrapper`.
  // Fails (and the server must not start) if any key cannot be unwrapped.
  static absl::StatusOr<std::unique_ptr<KeyRing>> Load(
      const storage::KeyStore* keys, const hsm::KeyWrapper* wrapper,
      Options options);

  // Builds a ring from keys already in memory (for tests of record sealing).
  static absl::StatusOr<std::unique_ptr<KeyRing>> FromKeys(
      std::map<uint32_t, crypto::SecretBytes> keys);

  KeyRing(const KeyRing&) = delete;
  KeyRing& operator=(const KeyRing&) = delete;

  // The key new records are sealed with: the highest version.
  uint32_t primary_version() const { return primary_version_; }
  const crypto::AesGcm& primary() const { return *keys_.at(primary_version_); }

  // The key of `version`; NOT_FOUND if the ring has none.
  absl::StatusOr<const crypto::AesGcm*> Get(uint32_t version) const;

  size_t size() const { return keys_.size(); }

 private:
  explicit KeyRing(std::map<uint32_t, std::unique_ptr<crypto::AesGcm>> keys);

  const std::map<uint32_t, std::unique_ptr<crypto::AesGcm>> keys_;
  const uint32_t primary_version_;
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_KEY_RING_H_
