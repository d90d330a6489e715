// The caller's identity from the verified client certificate of a call.
#ifndef CARDVAULT_SERVER_SERVICE_PEER_IDENTITY_H_
#define CARDVAULT_SERVER_SERVICE_PEER_IDENTITY_H_

#include <grpcpp/security/auth_context.h>

#include <string>

#include "absl/status/statusor.h"

namespace cardvault::service {

struct PeerId {
  std::string identity;
  bool from_common_name = false;  // the policy decides whether CNs count
};

// The URI SAN of the peer certificate when it has exactly one (SPIFFE style,
// e.g. "spiffe://cardvault.dev/pos"); "cn:" and the subject CN when it has
// none. UNAUTHENTICATED when the call has no verified certificate, has
// several URI SANs, a URI SAN starting with "cn:", or neither a URI SAN nor
// a CN.
absl::StatusOr<PeerId> PeerIdentity(const grpc::AuthContext& context);

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_PEER_IDENTITY_H_
