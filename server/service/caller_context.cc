#include "server/service/caller_context.h"

#include <grpc/grpc_security_constants.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
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

// Serial and fingerprint by client certificate (PEM, as gRPC passes it):
// parsing X.509 through OpenSSL 3's decoders on every call cost more than
// the rest of a Tokenize. Bounded; cleared when full.
class CertificateInfoCache {
 public:
  static constexpr size_t kMaxEntries = 1024;

  std::optional<crypto::CertificateInfo> Get(absl::string_view pem) {
    {
      absl::ReaderMutexLock lock(&mu_);
      auto it = entries_.find(pem);
      if (it != entries_.end()) return it->second;
    }
    absl::StatusOr<crypto::CertificateInfo> info =
        crypto::ParseCertificateInfo(pem);
    if (!info.ok()) return std::nullopt;
    absl::MutexLock lock(&mu_);
    if (entries_.size() >= kMaxEntries) entries_.clear();
    entries_.emplace(std::string(pem), *info);
    return *std::move(info);
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, crypto::CertificateInfo> entries_
      ABSL_GUARDED_BY(mu_);
};

// The serial and SHA-256 fingerprint of the call's client certificate.
void SetCertificate(const grpc::AuthContext& auth_context,
                    auth::Caller* caller) {
  auto pem = auth_context.FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  if (pem.empty()) return;
  static auto* cache = new CertificateInfoCache();
  std::optional<crypto::CertificateInfo> info =
      cache->Get(absl::string_view(pem.front().data(), pem.front().size()));
  if (info.has_value()) {
    caller->certificate_serial = std::move(info->serial_hex);
    caller->certificate_sha256 = std::move(info->sha256_hex);
  }
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
  SetCertificate(*auth_context, &caller);
  return caller;
}

auth::Caller UnidentifiedCaller(const grpc::ServerContextBase& context) {
  auth::Caller caller;
  caller.peer = context.peer();
  caller.request_id = NextRequestId();
  // A verified certificate that gave no usable identity still identifies
  // the caller's key in the record (and its refusal summary).
  if (auto auth_context = context.auth_context(); auth_context != nullptr) {
    SetCertificate(*auth_context, &caller);
  }
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

absl::Status TooManyCallsInFlight() {
  return absl::ResourceExhaustedError(
      "too many calls in flight for this identity; retry with backoff");
}

absl::StatusOr<auth::Caller> AdmitCaller(
    const vault::Vault& vault, CallsInFlight& calls,
    const grpc::ServerContextBase& context, ::cardvault::v1::EventType type,
    absl::string_view rpc, bool has_unknown_fields, CallsInFlight::Slot* slot) {
  absl::StatusOr<auth::Caller> caller =
      IdentifyCaller(vault, context, type, rpc, has_unknown_fields);
  if (!caller.ok()) return caller;
  std::optional<CallsInFlight::Slot> admitted =
      calls.TryAcquire(caller->identity);
  if (!admitted.has_value()) {
    return vault.RecordRejected(*caller, type, rpc, TooManyCallsInFlight());
  }
  *slot = *std::move(admitted);
  return caller;
}

}  // namespace cardvault::service
