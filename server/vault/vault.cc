#include "server/vault/vault.h"

#include <utility>

#include "server/vault/card_record.h"
#include "server/vault/token.h"

namespace cardvault::vault {

absl::StatusOr<std::unique_ptr<Vault>> Vault::Create(
    const storage::TokenStore* tokens, const KeyRing* keys,
    const auth::AccessPolicy* policy, Options options) {
  if (tokens == nullptr || keys == nullptr || policy == nullptr) {
    return absl::InvalidArgumentError("vault dependencies must not be null");
  }
  if (options.max_token_attempts < 1 || !options.now) {
    return absl::InvalidArgumentError("bad vault options");
  }
  return std::unique_ptr<Vault>(
      new Vault(tokens, keys, policy, std::move(options)));
}

Vault::Vault(const storage::TokenStore* tokens, const KeyRing* keys,
             const auth::AccessPolicy* policy, Options options)
    : tokens_(tokens), keys_(keys), policy_(policy), options_(options) {}

absl::StatusOr<std::string> Vault::Tokenize(const auth::Caller& caller,
                                            const Card& card) const {
  // Authorise before looking at the data, so an unauthorised caller learns
  // nothing about validation.
  if (absl::Status s =
          policy_->Check(caller.identity, auth::Permission::kTokenize);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateCard(card, options_.now()); !s.ok()) return s;
  for (int attempt = 0; attempt < options_.max_token_attempts; ++attempt) {
    absl::StatusOr<std::string> token = GenerateToken();
    if (!token.ok()) return token.status();
    absl::StatusOr<std::string> record = SealCardRecord(
        keys_->primary(), keys_->primary_version(), *token, card);
    if (!record.ok()) return record.status();
    absl::Status inserted = tokens_->Insert(*token, *record);
    if (inserted.ok()) return token;
    if (!absl::IsAlreadyExists(inserted)) return inserted;
  }
  return absl::InternalError("could not allocate a unique token");
}

absl::StatusOr<Card> Vault::Detokenize(const auth::Caller& caller,
                                       absl::string_view token) const {
  if (absl::Status s =
          policy_->Check(caller.identity, auth::Permission::kDetokenize);
      !s.ok()) {
    return s;
  }
  if (!IsWellFormedToken(token)) {
    return absl::InvalidArgumentError("token is malformed");
  }
  absl::StatusOr<std::string> record = tokens_->Lookup(token);
  if (absl::IsNotFound(record.status())) {
    return absl::NotFoundError("token not found");
  }
  if (!record.ok()) return record.status();
  return OpenCardRecord(*keys_, token, *record);
}

}  // namespace cardvault::vault
