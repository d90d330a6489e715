#include "hsm/pkcs11_module.h"

#include <dlfcn.h>

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "hsm/ck_rv.h"

namespace cardvault::hsm {

absl::StatusOr<std::unique_ptr<Pkcs11Module>> Pkcs11Module::Load(
    absl::string_view path) {
  const std::string p(path);
  void* library = dlopen(p.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load PKCS#11 module ", p, ": ", dlerror()));
  }
  auto get_function_list = reinterpret_cast<CK_C_GetFunctionList>(
      dlsym(library, "C_GetFunctionList"));
  if (get_function_list == nullptr) {
    dlclose(library);
    return absl::FailedPreconditionError(
        absl::StrCat(p, " is not a PKCS#11 module (no C_GetFunctionList)"));
  }
  CK_FUNCTION_LIST* functions = nullptr;
  if (absl::Status s =
          CkRvToStatus(get_function_list(&functions), "C_GetFunctionList");
      !s.ok()) {
    dlclose(library);
    return s;
  }
  CK_C_INITIALIZE_ARGS args = {};
  args.flags = CKF_OS_LOCKING_OK;
  if (absl::Status s =
          CkRvToStatus(functions->C_Initialize(&args), "C_Initialize");
      !s.ok()) {
    dlclose(library);
    return s;
  }
  return std::unique_ptr<Pkcs11Module>(new Pkcs11Module(library, functions));
}

Pkcs11Module::Pkcs11Module(void* library, CK_FUNCTION_LIST* functions)
    : library_(library), functions_(functions) {}

Pkcs11Module::~Pkcs11Module() {
  functions_->C_Finalize(nullptr);
  dlclose(library_);
}

absl::StatusOr<CK_SLOT_ID> Pkcs11Module::FindSlotByTokenLabel(
    absl::string_view label) const {
  CK_ULONG count = 0;
  if (absl::Status s = CkRvToStatus(
          functions_->C_GetSlotList(CK_TRUE, nullptr, &count), "C_GetSlotList");
      !s.ok()) {
    return s;
  }
  std::vector<CK_SLOT_ID> slots(count);
  if (absl::Status s =
          CkRvToStatus(functions_->C_GetSlotList(CK_TRUE, slots.data(), &count),
                       "C_GetSlotList");
      !s.ok()) {
    return s;
  }
  slots.resize(count);
  std::vector<CK_SLOT_ID> matches;
  for (CK_SLOT_ID slot : slots) {
    CK_TOKEN_INFO info;
    if (functions_->C_GetTokenInfo(slot, &info) != CKR_OK) continue;
    if (!(info.flags & CKF_TOKEN_INITIALIZED)) continue;
    absl::string_view token_label(reinterpret_cast<const char*>(info.label),
                                  sizeof(info.label));
    if (absl::StripTrailingAsciiWhitespace(token_label) == label) {
      matches.push_back(slot);
    }
  }
  if (matches.empty()) {
    return absl::NotFoundError(
        absl::StrCat("no PKCS#11 token labelled \"", label, "\""));
  }
  if (matches.size() > 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("several PKCS#11 tokens labelled \"", label, "\""));
  }
  return matches.front();
}

}  // namespace cardvault::hsm
