#include "hsm/pkcs11_aead.h"

#include <array>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "hsm/ck_rv.h"
#include "hsm/pkcs11_key_wrapper.h"
#include "server/crypto/random.h"

namespace cardvault::hsm {
namespace {

constexpr size_t kMaxPlaintextBytes = 1 << 20;
// Object handles are per session; these say the handle no longer names our
// key (the session was replaced), so it is unwrapped again.
bool HandleRefused(CK_RV rv) {
  return rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID;
}

CK_GCM_PARAMS GcmParams(unsigned char* nonce, absl::string_view aad) {
  CK_GCM_PARAMS params{};
  params.iv_ptr = nonce;
  params.iv_len = crypto::Aead::kNonceSize;
  params.iv_bits = crypto::Aead::kNonceSize * 8;
  params.aad_ptr =
      reinterpret_cast<unsigned char*>(const_cast<char*>(aad.data()));
  params.aad_len = aad.size();
  params.tag_bits = crypto::Aead::kTagSize * 8;
  return params;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Pkcs11Aead>> Pkcs11Aead::Create(
    const SessionPool* pool, WrappedKeySource source) {
  if (pool == nullptr || !source) {
    return absl::InvalidArgumentError("session pool and key source required");
  }
  std::array<uint8_t, 8> random;
  if (absl::Status s = crypto::FillRandom(absl::MakeSpan(random)); !s.ok()) {
    return s;
  }
  std::string label = absl::StrCat(
      "cardvault-dek-session-",
      absl::BytesToHexString(absl::string_view(
          reinterpret_cast<const char*>(random.data()), random.size())));
  std::unique_ptr<Pkcs11Aead> aead(
      new Pkcs11Aead(pool, std::move(source), std::move(label)));
  absl::StatusOr<Session> session = pool->Acquire();
  if (!session.ok()) return session.status();
  if (absl::Status s = aead->KeyIn(*session).status(); !s.ok()) return s;
  return aead;
}

Pkcs11Aead::Pkcs11Aead(const SessionPool* pool, WrappedKeySource source,
                       std::string object_label)
    : pool_(pool),
      source_(std::move(source)),
      object_label_(std::move(object_label)) {}

Pkcs11Aead::~Pkcs11Aead() {
  absl::StatusOr<Session> session = pool_->Acquire();
  if (!session.ok()) return;  // the objects die with their sessions
  CK_FUNCTION_LIST* f = session->functions();
  absl::MutexLock lock(&mu_);
  for (const auto& [id, handle] : objects_) {
    // Session objects are visible to every session of this process; the
    // label check makes sure the handle still names our key and not an
    // object that reused the number after its session closed.
    std::string label(object_label_.size() + 1, '\0');
    CK_ATTRIBUTE read = {CKA_LABEL, label.data(), label.size()};
    if (f->C_GetAttributeValue(session->handle(), handle, &read, 1) != CKR_OK ||
        read.ulValueLen != object_label_.size()) {
      continue;
    }
    label.resize(read.ulValueLen);
    if (label == object_label_) f->C_DestroyObject(session->handle(), handle);
  }
}

absl::StatusOr<CK_OBJECT_HANDLE> Pkcs11Aead::KeyIn(
    const Session& session) const {
  {
    absl::MutexLock lock(&mu_);
    auto it = objects_.find(session.id());
    if (it != objects_.end()) return it->second;
  }
  absl::StatusOr<WrappedKeyRef> ref = source_();
  if (!ref.ok()) return ref.status();
  absl::StatusOr<CK_OBJECT_HANDLE> handle =
      UnwrapForUse(session, ref->kek_label, ref->wrapped, object_label_);
  if (!handle.ok()) return handle.status();
  absl::MutexLock lock(&mu_);
  objects_[session.id()] = *handle;
  return *handle;
}

void Pkcs11Aead::Forget(const Session& session) const {
  absl::MutexLock lock(&mu_);
  objects_.erase(session.id());
}

absl::StatusOr<std::string> Pkcs11Aead::Seal(absl::string_view plaintext,
                                             absl::string_view aad) const {
  if (aad.empty() || plaintext.size() > kMaxPlaintextBytes) {
    return absl::InvalidArgumentError("bad AEAD input");
  }
  absl::StatusOr<Session> session = pool_->Acquire();
  if (!session.ok()) return session.status();
  std::string out(kNonceSize + plaintext.size() + kTagSize, '\0');
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  if (absl::Status s = crypto::FillRandom(absl::MakeSpan(o, kNonceSize));
      !s.ok()) {
    return s;
  }
  CK_FUNCTION_LIST* f = session->functions();
  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<CK_OBJECT_HANDLE> key = KeyIn(*session);
    if (!key.ok()) return key.status();
    CK_GCM_PARAMS params = GcmParams(o, aad);
    CK_MECHANISM mech{CKM_AES_GCM, &params, sizeof(params)};
    CK_RV rv = f->C_EncryptInit(session->handle(), &mech, *key);
    if (HandleRefused(rv) && attempt == 0) {
      Forget(*session);
      continue;
    }
    if (absl::Status s = CkRvToStatus(rv, "C_EncryptInit(AES-GCM)"); !s.ok()) {
      return s;
    }
    CK_ULONG len = plaintext.size() + kTagSize;
    // C_Encrypt only reads its input; a copy would leave the card data in
    // unwiped heap memory.
    auto* in = reinterpret_cast<CK_BYTE*>(const_cast<char*>(plaintext.data()));
    if (absl::Status s =
            CkRvToStatus(f->C_Encrypt(session->handle(), in, plaintext.size(),
                                      o + kNonceSize, &len),
                         "C_Encrypt(AES-GCM)");
        !s.ok()) {
      return s;
    }
    if (len != plaintext.size() + kTagSize) {
      return absl::InternalError("AES-GCM output has an unexpected length");
    }
    return out;
  }
}

absl::StatusOr<crypto::SecretBytes> Pkcs11Aead::Open(
    absl::string_view sealed, absl::string_view aad) const {
  if (aad.empty() || sealed.size() < kOverhead ||
      sealed.size() > kMaxPlaintextBytes + kOverhead) {
    return absl::InvalidArgumentError("authentication failed");
  }
  absl::StatusOr<Session> session = pool_->Acquire();
  if (!session.ok()) return session.status();
  std::string nonce(sealed.substr(0, kNonceSize));
  std::string body(sealed.substr(kNonceSize));
  CK_FUNCTION_LIST* f = session->functions();
  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<CK_OBJECT_HANDLE> key = KeyIn(*session);
    if (!key.ok()) return key.status();
    CK_GCM_PARAMS params =
        GcmParams(reinterpret_cast<unsigned char*>(nonce.data()), aad);
    CK_MECHANISM mech{CKM_AES_GCM, &params, sizeof(params)};
    CK_RV rv = f->C_DecryptInit(session->handle(), &mech, *key);
    if (HandleRefused(rv) && attempt == 0) {
      Forget(*session);
      continue;
    }
    if (absl::Status s = CkRvToStatus(rv, "C_DecryptInit(AES-GCM)"); !s.ok()) {
      return s;
    }
    // Room for the tag too: some tokens want the whole input's length.
    crypto::SecretBytes plain(body.size());
    CK_ULONG len = plain.size();
    rv =
        f->C_Decrypt(session->handle(), reinterpret_cast<CK_BYTE*>(body.data()),
                     body.size(), plain.data(), &len);
    // A failed tag is CKR_ENCRYPTED_DATA_INVALID in the standard and
    // CKR_GENERAL_ERROR in SoftHSM2: anything but a device or session
    // failure (UNAVAILABLE) opens nothing.
    if (absl::Status s = CkRvToStatus(rv, "C_Decrypt(AES-GCM)"); !s.ok()) {
      if (absl::IsUnavailable(s)) return s;
      return absl::InvalidArgumentError("authentication failed");
    }
    if (len != body.size() - kTagSize) {
      return absl::InvalidArgumentError("authentication failed");
    }
    return crypto::SecretBytes(plain.view().substr(0, len));
  }
}

}  // namespace cardvault::hsm
