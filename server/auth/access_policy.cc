#include "server/auth/access_policy.h"

#include "absl/strings/str_cat.h"

namespace cardvault::auth {
namespace {

uint32_t Bit(Permission p) { return 1u << static_cast<int>(p); }

// The least privilege of each role: auditors read the trail but touch no card
// data; admins touch neither.
uint32_t GrantsOf(Role role) {
  switch (role) {
    case Role::kTokenizer:
      return Bit(Permission::kTokenize);
    case Role::kDetokenizer:
      return Bit(Permission::kDetokenize);
    case Role::kAuditor:
      return Bit(Permission::kReadAudit);
    case Role::kAdmin:
      return 0;
  }
  return 0;
}

}  // namespace

absl::string_view PermissionName(Permission permission) {
  switch (permission) {
    case Permission::kTokenize:
      return "Tokenize";
    case Permission::kDetokenize:
      return "Detokenize";
    case Permission::kReadAudit:
      return "read the audit trail";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<AccessPolicy>> AccessPolicy::Create(
    const std::vector<RoleBinding>& bindings) {
  absl::flat_hash_map<std::string, uint32_t> grants;
  for (const RoleBinding& b : bindings) {
    if (b.identity.empty()) {
      return absl::InvalidArgumentError("policy binding has an empty identity");
    }
    if (b.roles.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("policy binding for ", b.identity, " has no role"));
    }
    uint32_t bits = 0;
    for (Role r : b.roles) bits |= GrantsOf(r);
    if (!grants.emplace(b.identity, bits).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("identity ", b.identity, " is bound twice"));
    }
  }
  return std::unique_ptr<AccessPolicy>(new AccessPolicy(std::move(grants)));
}

absl::Status AccessPolicy::Check(absl::string_view identity,
                                 Permission permission) const {
  auto it = grants_.find(identity);
  if (it == grants_.end() || (it->second & Bit(permission)) == 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("caller may not ", PermissionName(permission)));
  }
  return absl::OkStatus();
}

}  // namespace cardvault::auth
