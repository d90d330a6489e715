#include "server/service/peer_identity.h"

#include <grpc/grpc_security_constants.h>

#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/auth/access_policy.h"

namespace cardvault::service {
namespace {

std::vector<std::string> Values(const grpc::AuthContext& context,
                                const char* property) {
  std::vector<std::string> out;
  for (const grpc::string_ref& v : context.FindPropertyValues(property)) {
    out.emplace_back(v.data(), v.size());
  }
  return out;
}

}  // namespace

absl::StatusOr<PeerId> PeerIdentity(const grpc::AuthContext& context) {
  if (!context.IsPeerAuthenticated()) {
    return absl::UnauthenticatedError("no verified client certificate");
  }
  std::vector<std::string> uris = Values(context, GRPC_PEER_URI_PROPERTY_NAME);
  if (uris.size() == 1) {
    if (absl::StartsWithIgnoreCase(uris.front(), auth::kCommonNamePrefix)) {
      return absl::UnauthenticatedError(
          "client certificate URI SAN uses the cn: scheme, which names CN "
          "identities");
    }
    return PeerId{uris.front(), false};
  }
  if (uris.size() > 1) {
    return absl::UnauthenticatedError(
        "client certificate has several URI SANs; exactly one is required");
  }
  std::vector<std::string> cns = Values(context, GRPC_X509_CN_PROPERTY_NAME);
  if (cns.size() == 1 && !cns.front().empty()) {
    return PeerId{absl::StrCat(auth::kCommonNamePrefix, cns.front()), true};
  }
  return absl::UnauthenticatedError(
      "client certificate has neither a URI SAN nor a common name");
}

}  // namespace cardvault::service
