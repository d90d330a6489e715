// Builds the auth::Caller of a call from its verified TLS peer.
#ifndef CARDVAULT_SERVER_SERVICE_CALLER_CONTEXT_H_
#define CARDVAULT_SERVER_SERVICE_CALLER_CONTEXT_H_

#include <grpcpp/server_context.h>

#include "absl/status/statusor.h"
#include "server/auth/access_policy.h"
#include "server/service/calls_in_flight.h"
#include "server/vault/vault.h"

namespace cardvault::service {

// Identity (see PeerIdentity), certificate serial and SHA-256 fingerprint,
// peer address, and a request id unique within this process.
absl::StatusOr<auth::Caller> CallerOf(const grpc::ServerContextBase& context);

// The caller of a call that has no usable identity (peer and request id
// only), for the audit record of its refusal.
auth::Caller UnidentifiedCaller(const grpc::ServerContextBase& context);

// The verified caller of a call whose request holds only known fields;
// otherwise the refusal, recorded in the audit trail under `type` and `rpc`.
absl::StatusOr<auth::Caller> IdentifyCaller(
    const vault::Vault& vault, const grpc::ServerContextBase& context,
    ::cardvault::v1::EventType type, absl::string_view rpc,
    bool has_unknown_fields = false);

// As IdentifyCaller, and then takes one of the caller's places in `calls`
// into `*slot`: RESOURCE_EXHAUSTED (recorded) when the identity already has
// its most calls in flight.
absl::StatusOr<auth::Caller> AdmitCaller(
    const vault::Vault& vault, CallsInFlight& calls,
    const grpc::ServerContextBase& context, ::cardvault::v1::EventType type,
    absl::string_view rpc, bool has_unknown_fields, CallsInFlight::Slot* slot);

// The refusal of a caller over its in-flight limit.
absl::Status TooManyCallsInFlight();

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_CALLER_CONTEXT_H_
