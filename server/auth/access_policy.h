// Who may do what: client identities mapped to roles, deny by default.
//
// Thread safety: immutable after Create; thread-safe.
#ifndef CARDVAULT_SERVER_AUTH_ACCESS_POLICY_H_
#define CARDVAULT_SERVER_AUTH_ACCESS_POLICY_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace cardvault::auth {

enum class Role { kTokenizer, kDetokenizer, kAuditor, kAdmin };

// One right per kind of access.
enum class Permission { kTokenize, kDetokenize, kReadAudit };

absl::string_view PermissionName(Permission permission);

// The authenticated caller of one request, from its verified certificate,
// and what identifies the request in the audit trail.
struct Caller {
  std::string identity;            // URI SAN (SPIFFE ID) or, failing that, CN
  std::string certificate_serial;  // uppercase hex
  std::string certificate_sha256;  // lowercase hex of the DER's SHA-256
  std::string peer;                // transport address
  std::string request_id;          // unique per server process
};

struct RoleBinding {
  std::string identity;
  std::vector<Role> roles;
};

class AccessPolicy {
 public:
  // INVALID_ARGUMENT for an empty identity, a binding without roles, or an
  // identity bound twice.
  static absl::StatusOr<std::unique_ptr<AccessPolicy>> Create(
      const std::vector<RoleBinding>& bindings);

  // OK if one of `identity`'s roles grants `permission`; otherwise
  // PERMISSION_DENIED (also for identities the policy does not name).
  absl::Status Check(absl::string_view identity, Permission permission) const;

 private:
  explicit AccessPolicy(absl::flat_hash_map<std::string, uint32_t> grants)
      : grants_(std::move(grants)) {}

  // identity -> bit set of granted permissions.
  const absl::flat_hash_map<std::string, uint32_t> grants_;
};

}  // namespace cardvault::auth

#endif  // CARDVAULT_SERVER_AUTH_ACCESS_POLICY_H_
