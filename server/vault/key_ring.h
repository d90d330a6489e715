// Data-encryption keys (DEKs) by version, held unwrapped only in locked,
// non-dumpable memory, and stored only wrapped under the HSM's KEK (format in
// wrapped_keys.h, key ids "dek/<8 hex digits>").
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
#include "server/crypto/hmac_sha256.h"
#include "server/storage/token_store.h"

namespace cardvault::vault {

// Key id under which the wrapped DEK of `version` is stored.
std::string DataKeyId(uint32_t version);

// The audit chain's HMAC key: the highest version stored under "audit-mac/",
// created in the HSM (and stored wrapped) on first start.
struct AuditKey {
  uint32_t version;
  std::unique_ptr<crypto::HmacSha256> mac;
};
absl::StatusOr<AuditKey> LoadAuditKey(const storage::KeyStore* keys,
                                      const hsm::KeyWrapper* wrapper);

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
