// A PKCS#11 module for tests that forwards every call to SoftHSM2 (or the
// module named by CARDVAULT_FAULT_PKCS11_TARGET) and fails on command.
//
// While the file named by CARDVAULT_FAULT_PKCS11_CONTROL exists, the calls a
// running vault makes to the token (sessions, key generation, wrapping,
// object search, session info) return the CK_RV written in it as a decimal
// number (CKR_DEVICE_ERROR, 48, when empty), as a failing or unplugged HSM
// would. Removing the file heals it. Loading and C_Initialize always pass
// through, so that a server can start and then see the device fail.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>

#include "hsm/pkcs11.h"

namespace {

CK_FUNCTION_LIST g_list;
CK_FUNCTION_LIST* g_target = nullptr;
std::once_flag g_once;

// The injected error, or CKR_OK when healthy.
CK_RV Fault() {
  const char* control = std::getenv("CARDVAULT_FAULT_PKCS11_CONTROL");
  if (control == nullptr) return CKR_OK;
  std::ifstream in(control);
  if (!in) return CKR_OK;
  unsigned long code = 0;
  return (in >> code) && code != 0 ? code : CKR_DEVICE_ERROR;
}

CK_RV OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, void* app, CK_NOTIFY notify,
                  CK_SESSION_HANDLE_PTR session) {
  if (CK_RV rv = Fault(); rv != CKR_OK) return rv;
  return g_target->C_OpenSession(slot, flags, app, notify, session);
}

CK_RV GetSessionInfo(CK_SESSION_HANDLE session, CK_SESSION_INFO_PTR info) {
  if (CK_RV rv = Fault(); rv != CKR_OK) return rv;
  return g_target->C_GetSessionInfo(session, info);
}

CK_RV GenerateKey(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
                  CK_ATTRIBUTE_PTR templ, CK_ULONG count,
                  CK_OBJECT_HANDLE_PTR key) {
  if (CK_RV rv = Fault(); rv != CKR_OK) return rv;
  return g_target->C_GenerateKey(session, mechanism, templ, count, key);
}

CK_RV WrapKey(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
              CK_OBJECT_HANDLE wrapping, CK_OBJECT_HANDLE key,
              CK_BYTE_PTR wrapped, CK_ULONG_PTR len) {
  if (CK_RV rv = Fault(); rv != CKR_OK) return rv;
  return g_target->C_WrapKey(session, mechanism, wrapping, key, wrapped, len);
}

CK_RV UnwrapKey(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
                CK_OBJECT_HANDLE unwrapping, CK_BYTE_PTR wrapped, CK_ULONG len,
                CK_ATTRIBUTE_PTR templ, CK_ULONG count,
                CK_OBJECT_HANDLE_PTR key) {
  if (CK_RV rv = Fault(); rv != CKR_OK) return rv;
  return g_target->C_UnwrapKey(session, mechanism, unwrapping, wrapped, len,
                               templ, count, key);
}

CK_RV FindObjectsInit(CK_SESSION_HANDLE session, CK_ATTRIBUTE_PTR templ,
                      CK_ULONG count) {
  if (CK_RV rv = Fault(); rv != CKR_OK) return rv;
  return g_target->C_FindObjectsInit(session, templ, count);
}

CK_RV Load() {
  const char* path = std::getenv("CARDVAULT_FAULT_PKCS11_TARGET");
  void* lib = dlopen(path != nullptr ? path : "/usr/lib/softhsm/libsofthsm2.so",
                     RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return CKR_GENERAL_ERROR;
  auto get =
      reinterpret_cast<CK_C_GetFunctionList>(dlsym(lib, "C_GetFunctionList"));
  if (get == nullptr || get(&g_target) != CKR_OK) return CKR_GENERAL_ERROR;
  g_list = *g_target;
  g_list.C_OpenSession = OpenSession;
  g_list.C_GetSessionInfo = GetSessionInfo;
  g_list.C_GenerateKey = GenerateKey;
  g_list.C_WrapKey = WrapKey;
  g_list.C_UnwrapKey = UnwrapKey;
  g_list.C_FindObjectsInit = FindObjectsInit;
  return CKR_OK;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) CK_RV C_GetFunctionList(
    CK_FUNCTION_LIST_PTR_PTR list) {
  CK_RV loaded = CKR_OK;
  std::call_once(g_once, [&] { loaded = Load(); });
  if (g_target == nullptr) return loaded != CKR_OK ? loaded : CKR_GENERAL_ERROR;
  *list = &g_list;
  return CKR_OK;
}
