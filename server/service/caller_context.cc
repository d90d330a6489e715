#include "server/service/caller_context.h"

#include <grpc/grpc_security_constants.h>

#include <atomic>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/crypto/certificate_info.h"
#include "server/crypto/random.h"
#include "server/service/peer_identity.h"

namespace cardvault::service {
namespace {

absl::Status UnknownFieldsError(absl::string_view where) {
  return absl::InvalidArgumentError(
      absl::StrCat(where, " has fields this server does not accept"));
}

// "<8 random hex digits of this process>-<counter>": unique per process and
// unguessable across restarts, without a per-request CSPRNG call.
std::string NextRequestId() {
  static const std::string* prefix = [] {
    uint8_t bytes[4] = {};
    (void)crypto::FillRandom(absl::MakeSpan(bytes));
    return new std::string(absl::StrFormat("%02x%02x%02x%02x", bytes[0],
                                           bytes[1], bytes[2], bytes[3]));
  }();
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat(*prefix, "-", ++counter);
}

}  // namespace

absl::StatusOr<auth::Caller> CallerOf(const grpc::ServerContextBase& context) {
  auto auth_context = context.auth_context();
  if (auth_context == nullptr) {
    return absl::UnauthenticatedError("no verified client certificate");
  }
  absl::StatusOr<PeerId> identity = PeerIdentity(*auth_context);
  if (!identity.ok()) return identity.status();
  auth::Caller caller;
  caller.identity = std::move(identity->identity);
  caller.identity_is_common_name = identity->from_common_name;
  caller.peer = context.peer();
  caller.request_id = NextRequestId();
  auto pem = auth_context->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  if (!pem.empty()) {
    absl::StatusOr<crypto::CertificateInfo> info = crypto::ParseCertificateInfo(
        absl::string_view(pem.front().data(), pem.front().size()));
    if (info.ok()) {
      caller.certificate_serial = std::move(info->serial_hex);
      caller.certificate_sha256 = std::move(info->sha256_hex);
    }
  }
  return caller;
}

auth::Caller UnidentifiedCaller(const grpc::ServerContextBase& context) {
  auth::Caller caller;
  caller.peer = context.peer();
  caller.request_id = NextRequestId();
  return caller;
}

absl::StatusOr<auth::Caller> IdentifyCaller(
    const vault::Vault& vault, const grpc::ServerContextBase& context,
    ::cardvault::v1::EventType type, absl::string_view rpc,
    bool has_unknown_fields) {
  absl::StatusOr<auth::Caller> caller = CallerOf(context);
  if (!caller.ok()) {
    return vault.RecordRejected(UnidentifiedCaller(context), type, rpc,
                                caller.status());
  }
  if (has_unknown_fields) {
    return vault.RecordRejected(*caller, type, rpc,
                                UnknownFieldsError("request"));
  }
  return caller;
}

}  // namespace cardvault::service
