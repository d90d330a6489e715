// AES-256-GCM inside a PKCS#11 token (direct-HSM mode): the data key is
// unwrapped into each session that uses it as a sensitive, non-extractable
// session object, and every Seal/Open is a C_Encrypt/C_Decrypt with
// CKM_AES_GCM, a 96-bit nonce from the host CSPRNG and the associated data.
// The bytes equal crypto::AesGcm's (crypto/aead.h), so records sealed in
// either mode open in the other.
//
// Thread safety: thread-safe; each call takes its own pooled session, and
// each session its own key object (created there on first use, keyed by the
// session's never-reused id).
#ifndef CARDVAULT_HSM_PKCS11_AEAD_H_
#define CARDVAULT_HSM_PKCS11_AEAD_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "hsm/key_wrapper.h"
#include "hsm/pkcs11.h"
#include "hsm/session_pool.h"
#include "server/crypto/aead.h"

namespace cardvault::hsm {

class Pkcs11Aead : public crypto::Aead {
 public:
  // Unwraps the key once now (so that a key the HSM cannot use fails at
  // start-up). `pool` must outlive the object.
  static absl::StatusOr<std::unique_ptr<Pkcs11Aead>> Create(
      const SessionPool* pool, WrappedKeySource source);

  Pkcs11Aead(const Pkcs11Aead&) = delete;
  Pkcs11Aead& operator=(const Pkcs11Aead&) = delete;
  // Destroys the key objects it made (checked by their label first).
  ~Pkcs11Aead() override;

  absl::StatusOr<std::string> Seal(absl::string_view plaintext,
                                   absl::string_view aad) const override;
  absl::StatusOr<crypto::SecretBytes> Open(
      absl::string_view sealed, absl::string_view aad) const override;

 private:
  Pkcs11Aead(const SessionPool* pool, WrappedKeySource source,
             std::string object_label);
  // The key's object in `session`, unwrapped there if not yet.
  absl::StatusOr<CK_OBJECT_HANDLE> KeyIn(const Session& session) const;
  // Forgets the object of `session` (its handle was refused).
  void Forget(const Session& session) const;

  const SessionPool* const pool_;
  const WrappedKeySource source_;
  const std::string object_label_;  // random, unique to this object
  mutable absl::Mutex mu_;
  mutable absl::flat_hash_map<uint64_t, CK_OBJECT_HANDLE> objects_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace cardvault::hsm

#endif  // CARDVAULT_HSM_PKCS11_AEAD_H_
