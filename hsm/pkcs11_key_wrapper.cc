#include "hsm/pkcs11_key_wrapper.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "hsm/ck_rv.h"
#include "hsm/pkcs11_aead.h"

namespace cardvault::hsm {
namespace {

constexpr CK_ULONG kAes256KeyBytes = 32;
// Wrapped AES-256 under RFC 5649 is 40 bytes; anything far larger is not ours.
constexpr size_t kMaxWrappedKeyBytes = 512;

CK_BBOOL kTrue = CK_TRUE;
CK_BBOOL kFalse = CK_FALSE;
CK_OBJECT_CLASS kSecretKeyClass = CKO_SECRET_KEY;
CK_KEY_TYPE kAesKeyType = CKK_AES;

// SoftHSM fails concurrent object creation (platform notes): serialise it.
absl::Mutex key_creation_mu;

// Destroys a session object (a transient data key) when it goes out of scope.
class SessionObject {
 public:
  SessionObject(const Session& session, CK_OBJECT_HANDLE handle)
      : session_(session), handle_(handle) {}
  SessionObject(const SessionObject&) = delete;
  SessionObject& operator=(const SessionObject&) = delete;
  ~SessionObject() {
    session_.functions()->C_DestroyObject(session_.handle(), handle_);
  }
  CK_OBJECT_HANDLE handle() const { return handle_; }

 private:
  const Session& session_;
  const CK_OBJECT_HANDLE handle_;
};

CK_MECHANISM WrapMechanism() {
  return CK_MECHANISM{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
}

absl::Status CheckKekAttributes(const Session& session, CK_OBJECT_HANDLE kek,
                                absl::string_view label) {
  CK_BBOOL sensitive = CK_FALSE, extractable = CK_TRUE, wrap = CK_FALSE,
           unwrap = CK_FALSE, token = CK_FALSE;
  CK_KEY_TYPE key_type = 0;
  CK_ULONG value_len = 0;
  CK_ATTRIBUTE attrs[] = {
      {CKA_SENSITIVE, &sensitive, sizeof(sensitive)},
      {CKA_EXTRACTABLE, &extractable, sizeof(extractable)},
      {CKA_WRAP, &wrap, sizeof(wrap)},
      {CKA_UNWRAP, &unwrap, sizeof(unwrap)},
      {CKA_TOKEN, &token, sizeof(token)},
      {CKA_KEY_TYPE, &key_type, sizeof(key_type)},
      {CKA_VALUE_LEN, &value_len, sizeof(value_len)},
  };
  if (absl::Status s =
          CkRvToStatus(session.functions()->C_GetAttributeValue(
                           session.handle(), kek, attrs, std::size(attrs)),
                       "C_GetAttributeValue(KEK)");
      !s.ok()) {
    return s;
  }
  if (sensitive != CK_TRUE || extractable != CK_FALSE) {
    return absl::FailedPreconditionError(
        absl::StrCat("KEK \"", label,
                     "\" must be CKA_SENSITIVE=true and "
                     "CKA_EXTRACTABLE=false; refusing to use it"));
  }
  if (key_type != CKK_AES || value_len != kAes256KeyBytes) {
    return absl::FailedPreconditionError(
        absl::StrCat("KEK \"", label, "\" must be an AES-256 key"));
  }
  if (wrap != CK_TRUE || unwrap != CK_TRUE || token != CK_TRUE) {
    return absl::FailedPreconditionError(
        absl::StrCat("KEK \"", label,
                     "\" must be a token object with CKA_WRAP and CKA_UNWRAP"));
  }
  return absl::OkStatus();
}

absl::StatusOr<CK_OBJECT_HANDLE> GenerateKek(const Session& session,
                                             absl::string_view label) {
  CK_ULONG value_len = kAes256KeyBytes;
  std::string label_copy(label);
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &kSecretKeyClass, sizeof(kSecretKeyClass)},
      {CKA_KEY_TYPE, &kAesKeyType, sizeof(kAesKeyType)},
      {CKA_VALUE_LEN, &value_len, sizeof(value_len)},
      {CKA_LABEL, label_copy.data(), label_copy.size()},
      {CKA_TOKEN, &kTrue, sizeof(kTrue)},
      {CKA_PRIVATE, &kTrue, sizeof(kTrue)},
      {CKA_SENSITIVE, &kTrue, sizeof(kTrue)},
      {CKA_EXTRACTABLE, &kFalse, sizeof(kFalse)},
      {CKA_MODIFIABLE, &kFalse, sizeof(kFalse)},
      {CKA_WRAP, &kTrue, sizeof(kTrue)},
      {CKA_UNWRAP, &kTrue, sizeof(kTrue)},
      {CKA_ENCRYPT, &kFalse, sizeof(kFalse)},
      {CKA_DECRYPT, &kFalse, sizeof(kFalse)},
      {CKA_SIGN, &kFalse, sizeof(kFalse)},
      {CKA_VERIFY, &kFalse, sizeof(kFalse)},
  };
  CK_MECHANISM mech{CKM_AES_KEY_GEN, nullptr, 0};
  CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE;
  if (absl::Status s = CkRvToStatus(
          session.functions()->C_GenerateKey(session.handle(), &mech, tmpl,
                                             std::size(tmpl), &kek),
          "C_GenerateKey(KEK)");
      !s.ok()) {
    return s;
  }
  return kek;
}

}  // namespace

absl::StatusOr<CK_OBJECT_HANDLE> FindSecretKeyByLabel(const Session& session,
                                                      absl::string_view label) {
  std::string label_copy(label);
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &kSecretKeyClass, sizeof(kSecretKeyClass)},
      {CKA_LABEL, label_copy.data(), label_copy.size()},
  };
  CK_FUNCTION_LIST* f = session.functions();
  if (absl::Status s = CkRvToStatus(
          f->C_FindObjectsInit(session.handle(), tmpl, std::size(tmpl)),
          "C_FindObjectsInit");
      !s.ok()) {
    return s;
  }
  CK_OBJECT_HANDLE found[2];
  CK_ULONG count = 0;
  CK_RV rv = f->C_FindObjects(session.handle(), found, 2, &count);
  f->C_FindObjectsFinal(session.handle());
  if (absl::Status s = CkRvToStatus(rv, "C_FindObjects"); !s.ok()) return s;
  if (count == 0) {
    return absl::NotFoundError(
        absl::StrCat("no secret key labelled \"", label, "\" in the token"));
  }
  if (count > 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("several secret keys labelled \"", label, "\""));
  }
  return found[0];
}

namespace {

// The KEK labelled `label` in `session`, found and checked.
absl::StatusOr<CK_OBJECT_HANDLE> FindKek(const Session& session,
                                         absl::string_view label) {
  absl::StatusOr<CK_OBJECT_HANDLE> kek = FindSecretKeyByLabel(session, label);
  if (!kek.ok()) return kek.status();
  if (absl::Status s = CheckKekAttributes(session, *kek, label); !s.ok()) {
    return s;
  }
  return kek;
}

// Wraps the key `handle` under `kek`.
absl::StatusOr<std::string> Wrap(const Session& session, CK_OBJECT_HANDLE kek,
                                 CK_OBJECT_HANDLE handle) {
  CK_FUNCTION_LIST* f = session.functions();
  CK_MECHANISM wrap = WrapMechanism();
  CK_ULONG len = 0;
  if (absl::Status s = CkRvToStatus(
          f->C_WrapKey(session.handle(), &wrap, kek, handle, nullptr, &len),
          "C_WrapKey");
      !s.ok()) {
    return s;
  }
  std::string wrapped(len, '\0');
  if (absl::Status s = CkRvToStatus(
          f->C_WrapKey(session.handle(), &wrap, kek, handle,
                       reinterpret_cast<CK_BYTE*>(wrapped.data()), &len),
          "C_WrapKey");
      !s.ok()) {
    return s;
  }
  wrapped.resize(len);
  return wrapped;
}

// Unwraps `wrapped` under `kek` into a session object made from `tmpl`.
absl::StatusOr<CK_OBJECT_HANDLE> UnwrapWith(const Session& session,
                                            CK_OBJECT_HANDLE kek,
                                            absl::string_view wrapped,
                                            absl::Span<CK_ATTRIBUTE> tmpl) {
  if (wrapped.empty() || wrapped.size() > kMaxWrappedKeyBytes) {
    return absl::InvalidArgumentError("wrapped key has an impossible length");
  }
  std::string wrapped_copy(wrapped);
  CK_MECHANISM wrap = WrapMechanism();
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  absl::MutexLock lock(&key_creation_mu);
  if (absl::Status s = CkRvToStatus(
          session.functions()->C_UnwrapKey(
              session.handle(), &wrap, kek,
              reinterpret_cast<CK_BYTE*>(wrapped_copy.data()),
              wrapped_copy.size(), tmpl.data(), tmpl.size(), &handle),
          "C_UnwrapKey");
      !s.ok()) {
    return s;
  }
  return handle;
}

// Unwraps into a session object readable once by the host (and then
// destroyed), or sensitive and usable only to be wrapped again.
absl::StatusOr<CK_OBJECT_HANDLE> Unwrap(const Session& session,
                                        CK_OBJECT_HANDLE kek,
                                        absl::string_view wrapped,
                                        bool readable) {
  CK_BBOOL sensitive = readable ? CK_FALSE : CK_TRUE;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &kSecretKeyClass, sizeof(kSecretKeyClass)},
      {CKA_KEY_TYPE, &kAesKeyType, sizeof(kAesKeyType)},
      {CKA_TOKEN, &kFalse, sizeof(kFalse)},
      {CKA_SENSITIVE, &sensitive, sizeof(sensitive)},
      {CKA_EXTRACTABLE, &kTrue, sizeof(kTrue)},
  };
  return UnwrapWith(session, kek, wrapped, absl::MakeSpan(tmpl));
}

}  // namespace

absl::StatusOr<CK_OBJECT_HANDLE> UnwrapForUse(const Session& session,
                                              absl::string_view kek_label,
                                              absl::string_view wrapped,
                                              absl::string_view object_label) {
  absl::StatusOr<CK_OBJECT_HANDLE> kek = FindKek(session, kek_label);
  if (!kek.ok()) return kek.status();
  std::string label(object_label);
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &kSecretKeyClass, sizeof(kSecretKeyClass)},
      {CKA_KEY_TYPE, &kAesKeyType, sizeof(kAesKeyType)},
      {CKA_LABEL, label.data(), label.size()},
      {CKA_TOKEN, &kFalse, sizeof(kFalse)},
      {CKA_SENSITIVE, &kTrue, sizeof(kTrue)},
      {CKA_EXTRACTABLE, &kFalse, sizeof(kFalse)},
      {CKA_ENCRYPT, &kTrue, sizeof(kTrue)},
      {CKA_DECRYPT, &kTrue, sizeof(kTrue)},
      {CKA_WRAP, &kFalse, sizeof(kFalse)},
      {CKA_UNWRAP, &kFalse, sizeof(kFalse)},
  };
  return UnwrapWith(session, *kek, wrapped, absl::MakeSpan(tmpl));
}

absl::StatusOr<std::unique_ptr<crypto::Aead>> Pkcs11KeyWrapper::NewAeadInHsm(
    WrappedKeySource source) const {
  absl::StatusOr<std::unique_ptr<Pkcs11Aead>> aead =
      Pkcs11Aead::Create(pool_, std::move(source));
  if (!aead.ok()) return aead.status();
  return std::unique_ptr<crypto::Aead>(*std::move(aead));
}

absl::StatusOr<std::unique_ptr<Pkcs11KeyWrapper>> Pkcs11KeyWrapper::Create(
    const SessionPool* pool) {
  if (pool == nullptr) return absl::InvalidArgumentError("no session pool");
  return std::unique_ptr<Pkcs11KeyWrapper>(new Pkcs11KeyWrapper(pool));
}

absl::Status Pkcs11KeyWrapper::CheckKek(absl::string_view label) const {
  absl::StatusOr<Session> session = pool_->Acquire();
  if (!session.ok()) return session.status();
  return FindKek(*session, label).status();
}

absl::Status Pkcs11KeyWrapper::CreateKek(absl::string_view label) const {
  if (label.empty()) return absl::InvalidArgumentError("empty KEK label");
  absl::StatusOr<Session> session = pool_->Acquire();
  if (!session.ok()) return session.status();
  absl::MutexLock lock(&key_creation_mu);
  absl::StatusOr<CK_OBJECT_HANDLE> kek = FindSecretKeyByLabel(*session, label);
  if (absl::IsNotFound(kek.status())) kek = GenerateKek(*session, label);
  if (!kek.ok()) return kek.status();
  return CheckKekAttributes(*session, *kek, label);
}

absl::Status Pkcs11KeyWrapper::DestroyKek(absl::string_view label) const {
  absl::StatusOr<Session> session = pool_->Acquire();
  if (!session.ok()) return session.status();
  absl::MutexLock lock(&key_creation_mu);
  absl::StatusOr<CK_OBJECT_HANDLE> kek = FindSecretKeyByLabel(*session, label);
  if (absl::IsNotFound(kek.status())) return absl::OkStatus();
  if (!kek.ok()) return kek.status();
  return CkRvToStatus(
      session->functions()->C_DestroyObject(session->handle(), *kek),
      "C_DestroyObject(KEK)");
}

absl::StatusOr<std::string> Pkcs11KeyWrapper::GenerateWrappedKey(
    absl::string_view kek_label) const {
  absl::StatusOr<Session> session = pool_->Acquire();
  if (!session.ok()) return session.status();
  absl::StatusOr<CK_OBJECT_HANDLE> kek = FindKek(*session, kek_label);
  if (!kek.ok()) return kek.status();
  CK_ULONG value_len = kAes256KeyBytes;
  // A session object: sensitive (never readable) but extractable, so that it
  // can leave the HSM only wrapped under the KEK.
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &kSecretKeyClass, sizeof(kSecretKeyClass)},
      {CKA_KEY_TYPE, &kAesKeyType, sizeof(kAesKeyType)},
      {CKA_VALUE_LEN, &value_len, sizeof(value_len)},
      {CKA_TOKEN, &kFalse, sizeof(kFalse)},
      {CKA_SENSITIVE, &kTrue, sizeof(kTrue)},
      {CKA_EXTRACTABLE, &kTrue, sizeof(kTrue)},
  };
  CK_MECHANISM gen{CKM_AES_KEY_GEN, nullptr, 0};
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  {
    absl::MutexLock lock(&key_creation_mu);
    if (absl::Status s = CkRvToStatus(
            session->functions()->C_GenerateKey(session->handle(), &gen, tmpl,
                                                std::size(tmpl), &handle),
            "C_GenerateKey(data key)");
        !s.ok()) {
      return s;
    }
  }
  SessionObject key(*session, handle);
  return Wrap(*session, *kek, key.handle());
}

absl::StatusOr<crypto::SecretBytes> Pkcs11KeyWrapper::UnwrapKey(
    absl::string_view kek_label, absl::string_view wrapped) const {
  absl::StatusOr<Session> session = pool_->Acquire();
  if (!session.ok()) return session.status();
  absl::StatusOr<CK_OBJECT_HANDLE> kek = FindKek(*session, kek_label);
  if (!kek.ok()) return kek.status();
  absl::StatusOr<CK_OBJECT_HANDLE> handle =
      Unwrap(*session, *kek, wrapped, /*readable=*/true);
  if (!handle.ok()) return handle.status();
  SessionObject key(*session, *handle);
  crypto::SecretBytes value(kAes256KeyBytes, crypto::Protection::kLockedPages);
  CK_ATTRIBUTE read = {CKA_VALUE, value.data(), value.size()};
  if (absl::Status s =
          CkRvToStatus(session->functions()->C_GetAttributeValue(
                           session->handle(), key.handle(), &read, 1),
                       "C_GetAttributeValue(unwrapped key)");
      !s.ok()) {
    return s;
  }
  if (read.ulValueLen != kAes256KeyBytes) {
    return absl::InvalidArgumentError("unwrapped key is not 256 bits");
  }
  return value;
}

absl::StatusOr<std::string> Pkcs11KeyWrapper::RewrapKey(
    absl::string_view from, absl::string_view wrapped,
    absl::string_view to) const {
  absl::StatusOr<Session> session = pool_->Acquire();
  if (!session.ok()) return session.status();
  absl::StatusOr<CK_OBJECT_HANDLE> from_kek = FindKek(*session, from);
  if (!from_kek.ok()) return from_kek.status();
  absl::StatusOr<CK_OBJECT_HANDLE> to_kek = FindKek(*session, to);
  if (!to_kek.ok()) return to_kek.status();
  absl::StatusOr<CK_OBJECT_HANDLE> handle =
      Unwrap(*session, *from_kek, wrapped, /*readable=*/false);
  if (!handle.ok()) return handle.status();
  SessionObject key(*session, *handle);
  return Wrap(*session, *to_kek, key.handle());
}

}  // namespace cardvault::hsm
