// Runs against a real SoftHSM2 token made by deploy/init-softhsm.sh.
#include "hsm/pkcs11_key_wrapper.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/ck_rv.h"
#include "hsm/pkcs11_module.h"
#include "hsm/session_pool.h"
#include "server/config/config_loader.h"
#include "server/crypto/aes_gcm.h"
#include "server/storage/rocksdb_storage.h"
#include "server/vault/kek_manager.h"
#include "server/vault/key_ring.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_env.h"

namespace cardvault::hsm {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;

class Pkcs11KeyWrapperTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    env_ = testing::TestEnv::Create().release();
    // A second token, for login failures that the first token's logged-in
    // state would mask.
    testing::RunOrDie(
        "softhsm2-util --init-token --free --label second-token "
        "--so-pin 11112222 --pin 33334444 >/dev/null");
    module_ = Pkcs11Module::Load(testing::kSoftHsmModule)->release();
    CK_SLOT_ID slot = *module_->FindSlotByTokenLabel(env_->token_label());
    config::v1::HsmConfig hsm;
    hsm.set_pin_file(env_->pin_file());
    pool_ = SessionPool::Create(module_, slot, *config::ReadHsmPin(hsm),
                                {.max_sessions = 4})
                ->release();
  }
  static void TearDownTestSuite() {
    delete pool_;
    delete module_;
    delete env_;
  }

  // The wrapper, with the KEK `label` created in the token.
  static std::unique_ptr<Pkcs11KeyWrapper> Wrapper(absl::string_view label) {
    auto w = Pkcs11KeyWrapper::Create(pool_);
    EXPECT_THAT(w, IsOk());
    if (!w.ok()) return nullptr;
    EXPECT_THAT((*w)->CreateKek(label), IsOk());
    return *std::move(w);
  }

  static testing::TestEnv* env_;
  static Pkcs11Module* module_;
  static SessionPool* pool_;
};

testing::TestEnv* Pkcs11KeyWrapperTest::env_ = nullptr;
Pkcs11Module* Pkcs11KeyWrapperTest::module_ = nullptr;
SessionPool* Pkcs11KeyWrapperTest::pool_ = nullptr;

TEST_F(Pkcs11KeyWrapperTest, WrappedDataKeyUnwrapsToA256BitKey) {
  auto wrapper = Wrapper("kek-roundtrip");
  ASSERT_NE(wrapper, nullptr);
  auto wrapped = wrapper->GenerateWrappedKey("kek-roundtrip");
  ASSERT_THAT(wrapped, IsOk());
  EXPECT_EQ(wrapped->size(), 40u);  // RFC 5649 of 32 bytes
  auto a = wrapper->UnwrapKey("kek-roundtrip", *wrapped);
  auto b = wrapper->UnwrapKey("kek-roundtrip", *wrapped);
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(a->size(), 32u);
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(a->protection(), crypto::Protection::kLockedPages);
  // The wrapped form is not the key.
  EXPECT_EQ(wrapped->find(std::string(a->view())), std::string::npos);
  // Two generated keys differ.
  EXPECT_NE(*a,
            *wrapper->UnwrapKey("kek-roundtrip",
                                *wrapper->GenerateWrappedKey("kek-roundtrip")));
}

TEST_F(Pkcs11KeyWrapperTest, ChangedWrappedKeyIsRefused) {
  auto wrapper = Wrapper("kek-tamper");
  ASSERT_NE(wrapper, nullptr);
  std::string wrapped = *wrapper->GenerateWrappedKey("kek-tamper");
  wrapped[10] ^= 1;
  // SoftHSM reports a failed RFC 5649 integrity check as CKR_GENERAL_ERROR;
  // what matters is that no key comes back.
  EXPECT_THAT(wrapper->UnwrapKey("kek-tamper", wrapped),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("C_UnwrapKey")));
  EXPECT_THAT(wrapper->UnwrapKey("kek-tamper", ""),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(Pkcs11KeyWrapperTest, KeyFromAnotherKekDoesNotUnwrap) {
  auto w = Wrapper("kek-a");
  ASSERT_NE(w, nullptr);
  ASSERT_THAT(w->CreateKek("kek-b"), IsOk());
  EXPECT_THAT(w->UnwrapKey("kek-b", *w->GenerateWrappedKey("kek-a")),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("C_UnwrapKey")));
}

TEST_F(Pkcs11KeyWrapperTest, MissingKekIsNotFound) {
  auto w = *Pkcs11KeyWrapper::Create(pool_);
  EXPECT_THAT(w->CheckKek("kek-missing"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(w->GenerateWrappedKey("kek-missing"),
              StatusIs(absl::StatusCode::kNotFound));
}

// KEK rotation: the key moves from one KEK to another inside the HSM, and
// the old KEK, once destroyed, is gone from the token.
TEST_F(Pkcs11KeyWrapperTest,
       RewrapMovesAKeyToAnotherKekAndOldKekCanBeDestroyed) {
  auto w = Wrapper("kek-old");
  ASSERT_NE(w, nullptr);
  ASSERT_THAT(w->CreateKek("kek-new"), IsOk());
  const std::string wrapped = *w->GenerateWrappedKey("kek-old");
  auto key = w->UnwrapKey("kek-old", wrapped);
  ASSERT_THAT(key, IsOk());
  auto rewrapped = w->RewrapKey("kek-old", wrapped, "kek-new");
  ASSERT_THAT(rewrapped, IsOk());
  EXPECT_NE(*rewrapped, wrapped);
  EXPECT_EQ(rewrapped->find(std::string(key->view())), std::string::npos);
  auto moved = w->UnwrapKey("kek-new", *rewrapped);
  ASSERT_THAT(moved, IsOk());
  EXPECT_EQ(*moved, *key);
  EXPECT_THAT(w->UnwrapKey("kek-old", *rewrapped),
              StatusIs(absl::StatusCode::kInternal));

  ASSERT_THAT(w->DestroyKek("kek-old"), IsOk());
  EXPECT_THAT(w->CheckKek("kek-old"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(w->UnwrapKey("kek-old", wrapped),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(w->DestroyKek("kek-old"), IsOk());  // idempotent
  EXPECT_THAT(w->UnwrapKey("kek-new", *rewrapped), IsOk());
}

// Invariant 3: the KEK never leaves the HSM. The token itself must refuse to
// reveal its value or wrap it out.
TEST_F(Pkcs11KeyWrapperTest, TokenRefusesToRevealOrExportTheKek) {
  ASSERT_NE(Wrapper("kek-custody"), nullptr);
  auto session = pool_->Acquire();
  ASSERT_THAT(session, IsOk());
  CK_FUNCTION_LIST* f = session->functions();
  auto kek = FindSecretKeyByLabel(*session, "kek-custody");
  ASSERT_THAT(kek, IsOk());

  CK_BBOOL sensitive = CK_FALSE, extractable = CK_TRUE,
           never_extractable = CK_FALSE;
  CK_ATTRIBUTE flags[] = {
      {CKA_SENSITIVE, &sensitive, sizeof(sensitive)},
      {CKA_EXTRACTABLE, &extractable, sizeof(extractable)},
      {CKA_NEVER_EXTRACTABLE, &never_extractable, sizeof(never_extractable)},
  };
  ASSERT_EQ(f->C_GetAttributeValue(session->handle(), *kek, flags, 3), CKR_OK);
  EXPECT_EQ(sensitive, CK_TRUE);
  EXPECT_EQ(extractable, CK_FALSE);
  EXPECT_EQ(never_extractable, CK_TRUE);

  unsigned char value[64];
  CK_ATTRIBUTE read = {CKA_VALUE, value, sizeof(value)};
  CK_RV rv = f->C_GetAttributeValue(session->handle(), *kek, &read, 1);
  EXPECT_EQ(rv, CKR_ATTRIBUTE_SENSITIVE) << CkRvName(rv);
  EXPECT_EQ(read.ulValueLen, CK_UNAVAILABLE_INFORMATION);

  // Wrapping the KEK out under another key (one we could read) is refused.
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE type = CKK_AES;
  CK_ULONG len = 32;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof(cls)},       {CKA_KEY_TYPE, &type, sizeof(type)},
      {CKA_VALUE_LEN, &len, sizeof(len)},   {CKA_TOKEN, &no, sizeof(no)},
      {CKA_WRAP, &yes, sizeof(yes)},        {CKA_SENSITIVE, &no, sizeof(no)},
      {CKA_EXTRACTABLE, &yes, sizeof(yes)},
  };
  CK_MECHANISM gen{CKM_AES_KEY_GEN, nullptr, 0};
  CK_OBJECT_HANDLE attacker = CK_INVALID_HANDLE;
  ASSERT_EQ(f->C_GenerateKey(session->handle(), &gen, tmpl, 7, &attacker),
            CKR_OK);
  for (CK_MECHANISM_TYPE m : {CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP}) {
    CK_MECHANISM wrap{m, nullptr, 0};
    unsigned char out[128];
    CK_ULONG out_len = sizeof(out);
    rv = f->C_WrapKey(session->handle(), &wrap, attacker, *kek, out, &out_len);
    EXPECT_EQ(rv, CKR_KEY_UNEXTRACTABLE) << CkRvName(rv);
  }
  f->C_DestroyObject(session->handle(), attacker);

  // The KEK cannot be made extractable after the fact either.
  CK_ATTRIBUTE make_extractable = {CKA_EXTRACTABLE, &yes, sizeof(yes)};
  rv = f->C_SetAttributeValue(session->handle(), *kek, &make_extractable, 1);
  EXPECT_NE(rv, CKR_OK) << CkRvName(rv);
}

TEST_F(Pkcs11KeyWrapperTest, RefusesAnExtractableKek) {
  {
    auto session = pool_->Acquire();
    ASSERT_THAT(session, IsOk());
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE type = CKK_AES;
    CK_ULONG len = 32;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    char label[] = "kek-weak";
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_VALUE_LEN, &len, sizeof(len)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_LABEL, label, sizeof(label) - 1},
        {CKA_WRAP, &yes, sizeof(yes)},
        {CKA_UNWRAP, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &no, sizeof(no)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)},
    };
    CK_MECHANISM gen{CKM_AES_KEY_GEN, nullptr, 0};
    CK_OBJECT_HANDLE h;
    ASSERT_EQ(session->functions()->C_GenerateKey(session->handle(), &gen, tmpl,
                                                  9, &h),
              CKR_OK);
  }
  auto w = *Pkcs11KeyWrapper::Create(pool_);
  for (absl::Status s : {w->CheckKek("kek-weak"), w->CreateKek("kek-weak"),
                         w->GenerateWrappedKey("kek-weak").status()}) {
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kFailedPrecondition,
                            HasSubstr("CKA_EXTRACTABLE=false")));
  }
}

TEST_F(Pkcs11KeyWrapperTest, KeyRingStoresOnlyWrappedKeysAndReloadsThem) {
  auto wrapper = Wrapper("kek-ring");
  ASSERT_NE(wrapper, nullptr);
  const std::string dir = env_->dir() + "/ring-db";
  std::string first_key_record;
  {
    auto db = *storage::RocksDbStorage::Open({.data_dir = dir});
    auto kek = vault::KekManager::Open(db.get(), wrapper.get(),
                                       {.initial_label = "kek-ring"});
    ASSERT_THAT(kek, IsOk());
    auto ring = vault::KeyRing::Load(kek->get(), {});
    ASSERT_THAT(ring, IsOk());
    EXPECT_EQ((*ring)->primary_version(), 1u);
    auto keys = db->ListKeys();
    ASSERT_THAT(keys, IsOk());
    ASSERT_EQ(keys->size(), 2u);  // the data key and the KEK state
    EXPECT_EQ((*keys)[0].first, vault::DataKeyId(1));
    first_key_record = (*keys)[0].second;
    // The stored record holds the KEK label and the 40-byte wrapped key.
    EXPECT_EQ(first_key_record.size(),
              23 + std::string("kek-ring").size() + 40);
  }
  auto db = *storage::RocksDbStorage::Open({.data_dir = dir});
  // The stored KEK state, not the configured label, says which KEK is in
  // use once a vault exists.
  vault::KekManager::OpenReport report;
  auto kek = vault::KekManager::Open(db.get(), wrapper.get(),
                                     {.initial_label = "kek-other"}, &report);
  ASSERT_THAT(kek, IsOk());
  EXPECT_EQ(report.kek_label, "kek-ring");
  auto again = vault::KeyRing::Load(kek->get(), {});
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ((*again)->size(), 1u);
  EXPECT_EQ(db->ListKeys()->at(0).second, first_key_record);
  // Without its KEK in the HSM, the vault does not open (and makes none).
  ASSERT_THAT(wrapper->DestroyKek("kek-ring"), IsOk());
  EXPECT_THAT(vault::KekManager::Open(
                  db.get(), wrapper.get(),
                  {.initial_label = "kek-ring", .create_if_missing = true}),
              StatusIs(absl::StatusCode::kNotFound));
}

// Direct-HSM mode: the same bytes as host AES-256-GCM, so either opens what
// the other sealed; the associated data is bound in the HSM too.
TEST_F(Pkcs11KeyWrapperTest, SealedInTheHsmOpensOnTheHostAndBack) {
  auto w = Wrapper("kek-aead");
  ASSERT_NE(w, nullptr);
  const std::string wrapped = *w->GenerateWrappedKey("kek-aead");
  auto in_hsm = w->NewAeadInHsm([&]() -> absl::StatusOr<WrappedKeyRef> {
    return WrappedKeyRef{"kek-aead", wrapped};
  });
  ASSERT_THAT(in_hsm, IsOk());
  auto host = crypto::AesGcm::Create(*w->UnwrapKey("kek-aead", wrapped));
  ASSERT_THAT(host, IsOk());
  const std::string plaintext = "4111111111111111|12/30";
  auto sealed = (*in_hsm)->Seal(plaintext, "record-aad");
  ASSERT_THAT(sealed, IsOk());
  EXPECT_EQ(sealed->size(), plaintext.size() + crypto::Aead::kOverhead);
  auto opened = (*host)->Open(*sealed, "record-aad");
  ASSERT_THAT(opened, IsOk());
  EXPECT_EQ(opened->view(), plaintext);
  auto back =
      (*in_hsm)->Open(*(*host)->Seal(plaintext, "other-aad"), "other-aad");
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(back->view(), plaintext);
  // Another AAD, or a changed byte, opens nothing.
  EXPECT_THAT((*in_hsm)->Open(*sealed, "record-aae"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  std::string changed = *sealed;
  changed[14] ^= 1;
  EXPECT_THAT((*in_hsm)->Open(changed, "record-aad"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // Two seals of the same input differ (fresh nonce).
  EXPECT_NE(*(*in_hsm)->Seal(plaintext, "a"), *(*in_hsm)->Seal(plaintext, "a"));
}

// In direct-HSM mode the data key's object is sensitive and non-extractable,
// usable only to encrypt and decrypt, and destroyed with its owner.
TEST_F(Pkcs11KeyWrapperTest, DataKeyInTheHsmCannotBeReadOrExported) {
  auto w = Wrapper("kek-aead-custody");
  ASSERT_NE(w, nullptr);
  const std::string wrapped = *w->GenerateWrappedKey("kek-aead-custody");
  auto in_hsm = w->NewAeadInHsm([&]() -> absl::StatusOr<WrappedKeyRef> {
    return WrappedKeyRef{"kek-aead-custody", wrapped};
  });
  ASSERT_THAT(in_hsm, IsOk());
  auto session_keys = [&] {
    auto session = pool_->Acquire();
    EXPECT_THAT(session, IsOk());
    CK_FUNCTION_LIST* f = session->functions();
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE find[] = {{CKA_CLASS, &cls, sizeof(cls)},
                           {CKA_TOKEN, &no, sizeof(no)}};
    EXPECT_EQ(f->C_FindObjectsInit(session->handle(), find, 2), CKR_OK);
    CK_OBJECT_HANDLE found[64];
    CK_ULONG n = 0;
    f->C_FindObjects(session->handle(), found, 64, &n);
    f->C_FindObjectsFinal(session->handle());
    int ours = 0;
    for (CK_ULONG i = 0; i < n; ++i) {
      char label[64] = {};
      CK_BBOOL sensitive = CK_FALSE, extractable = CK_TRUE, wrap = CK_TRUE;
      CK_ATTRIBUTE attrs[] = {
          {CKA_LABEL, label, sizeof(label)},
          {CKA_SENSITIVE, &sensitive, sizeof(sensitive)},
          {CKA_EXTRACTABLE, &extractable, sizeof(extractable)},
          {CKA_WRAP, &wrap, sizeof(wrap)},
      };
      if (f->C_GetAttributeValue(session->handle(), found[i], attrs, 4) !=
              CKR_OK ||
          !absl::StartsWith(label, "cardvault-dek-session-")) {
        continue;
      }
      ++ours;
      EXPECT_EQ(sensitive, CK_TRUE);
      EXPECT_EQ(extractable, CK_FALSE);
      EXPECT_EQ(wrap, CK_FALSE);
      unsigned char value[64];
      CK_ATTRIBUTE read = {CKA_VALUE, value, sizeof(value)};
      EXPECT_EQ(f->C_GetAttributeValue(session->handle(), found[i], &read, 1),
                CKR_ATTRIBUTE_SENSITIVE);
    }
    return ours;
  };
  EXPECT_GE(session_keys(), 1);
  in_hsm->reset();
  EXPECT_EQ(session_keys(), 0);
}

// A session opened after a KEK rotation unwraps the key from where it is
// now (the source), so direct-HSM mode survives KEK rotation.
TEST_F(Pkcs11KeyWrapperTest, HsmAeadFollowsItsKeyAcrossKekRotation) {
  config::v1::HsmConfig hsm;
  hsm.set_pin_file(env_->pin_file());
  auto pool = SessionPool::Create(
      module_, *module_->FindSlotByTokenLabel(env_->token_label()),
      *config::ReadHsmPin(hsm), {.max_sessions = 2});
  ASSERT_THAT(pool, IsOk());
  auto w = *Pkcs11KeyWrapper::Create(pool->get());
  ASSERT_THAT(w->CreateKek("kek-gen1"), IsOk());
  ASSERT_THAT(w->CreateKek("kek-gen2"), IsOk());
  absl::Mutex mu;
  WrappedKeyRef where{"kek-gen1", *w->GenerateWrappedKey("kek-gen1")};
  auto in_hsm = w->NewAeadInHsm([&]() -> absl::StatusOr<WrappedKeyRef> {
    absl::MutexLock lock(&mu);
    return where;
  });
  ASSERT_THAT(in_hsm, IsOk());
  const std::string sealed = *(*in_hsm)->Seal("card", "aad");
  {
    absl::MutexLock lock(&mu);
    where = {"kek-gen2", *w->RewrapKey("kek-gen1", where.wrapped, "kek-gen2")};
  }
  ASSERT_THAT(w->DestroyKek("kek-gen1"), IsOk());
  // Hold the session that has the key, so the next call needs a new one.
  auto held = (*pool)->Acquire();
  ASSERT_THAT(held, IsOk());
  auto opened = (*in_hsm)->Open(sealed, "aad");
  ASSERT_THAT(opened, IsOk());
  EXPECT_EQ(opened->view(), "card");
}

TEST_F(Pkcs11KeyWrapperTest, SessionPoolNeverExceedsItsBound) {
  config::v1::HsmConfig hsm;
  hsm.set_pin_file(env_->pin_file());
  auto pool = SessionPool::Create(
      module_, *module_->FindSlotByTokenLabel(env_->token_label()),
      *config::ReadHsmPin(hsm),
      {.max_sessions = 2, .acquire_timeout = absl::Milliseconds(50)});
  ASSERT_THAT(pool, IsOk());
  auto a = (*pool)->Acquire();
  auto b = (*pool)->Acquire();
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_NE(a->handle(), b->handle());
  EXPECT_THAT((*pool)->Acquire(), StatusIs(absl::StatusCode::kUnavailable));
  const CK_SESSION_HANDLE released = a->handle();
  { Session drop = *std::move(a); }
  auto c = (*pool)->Acquire();
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->handle(), released);  // reused, not a new session
}

TEST_F(Pkcs11KeyWrapperTest, WrongPinIsUnauthenticated) {
  EXPECT_THAT(SessionPool::Create(
                  module_, *module_->FindSlotByTokenLabel("second-token"),
                  crypto::SecretBytes(absl::string_view("wrong-pin")), {}),
              StatusIs(absl::StatusCode::kUnauthenticated,
                       HasSubstr("CKR_PIN_INCORRECT")));
}

TEST(CkRvTest, MapsDeviceFailuresToUnavailableAndNamesTheCode) {
  EXPECT_THAT(CkRvToStatus(CKR_DEVICE_REMOVED, "C_WrapKey"),
              StatusIs(absl::StatusCode::kUnavailable,
                       HasSubstr("C_WrapKey failed: CKR_DEVICE_REMOVED")));
  EXPECT_THAT(CkRvToStatus(CKR_PIN_INCORRECT, "C_Login"),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(CkRvToStatus(CKR_KEY_UNEXTRACTABLE, "C_WrapKey"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(CkRvToStatus(CKR_OK, "x"), IsOk());
  EXPECT_THAT(CkRvToStatus(0x7777, "x"),
              StatusIs(absl::StatusCode::kUnknown, HasSubstr("0x00007777")));
}

TEST(Pkcs11ModuleTest, LoadFailsClearlyForMissingModule) {
  EXPECT_THAT(Pkcs11Module::Load("/nonexistent/libpkcs11.so"),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("/nonexistent/libpkcs11.so")));
}

}  // namespace
}  // namespace cardvault::hsm
