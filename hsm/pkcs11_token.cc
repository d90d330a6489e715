#include "hsm/pkcs11_token.h"

#include <utility>

namespace cardvault::hsm {

absl::StatusOr<std::unique_ptr<Pkcs11Token>> Pkcs11Token::Open(
    const Options& options, crypto::SecretBytes pin) {
  absl::StatusOr<std::unique_ptr<Pkcs11Module>> module =
      Pkcs11Module::Load(options.module_path);
  if (!module.ok()) return module.status();
  absl::StatusOr<CK_SLOT_ID> slot =
      (*module)->FindSlotByTokenLabel(options.token_label);
  if (!slot.ok()) return slot.status();
  absl::StatusOr<std::unique_ptr<SessionPool>> sessions =
      SessionPool::Create(module->get(), *slot, std::move(pin),
                          {.max_sessions = options.max_sessions,
                           .acquire_timeout = options.acquire_timeout});
  if (!sessions.ok()) return sessions.status();
  return std::unique_ptr<Pkcs11Token>(
      new Pkcs11Token(*std::move(module), *std::move(sessions)));
}

}  // namespace cardvault::hsm
