#include "server/service/node_peers.h"

#include <fstream>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "openssl/crypto.h"
#include "server/crypto/secret_bytes.h"
#include "server/service/caller_context.h"
#include "server/service/request_checks.h"
#include "server/service/status_conversion.h"
#include "server/vault/card.h"

namespace cardvault::service {
namespace {

namespace pb = ::cardvault::v1;

absl::StatusOr<std::string> ReadPem(const std::string& path,
                                    absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read ", what, " ", path));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void Wipe(std::string& s) {
  OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

// One call in flight; owned by its completion.
struct TakeCall {
  grpc::ClientContext context;
  pb::TakeHeldCvvRequest request;
  pb::TakeHeldCvvResponse response;
  vault::CvvPeers::TakeDone done;
};

}  // namespace

grpc::Status NodePeerService::TakeHeldCvv(grpc::ServerContext* context,
                                          const pb::TakeHeldCvvRequest* request,
                                          pb::TakeHeldCvvResponse* response) {
  CallsInFlight::Slot slot;
  absl::StatusOr<auth::Caller> caller =
      AdmitCaller(*vault_, *calls_, *context, pb::CVV_RELEASE,
                  vault::kTakeHeldCvvRpc, HasUnknownFields(*request), &slot);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  absl::StatusOr<std::optional<crypto::SecretBytes>> cvv =
      vault_->ReleaseHeldCvv(*caller, request->token());
  if (!cvv.ok()) return ToGrpcStatus(cvv.status());
  if (cvv->has_value()) response->set_cvv(std::string((*cvv)->view()));
  return grpc::Status::OK;
}

absl::StatusOr<std::unique_ptr<GrpcCvvPeers>> GrpcCvvPeers::Create(
    const Options& options) {
  if (options.deadline <= absl::ZeroDuration() || options.max_peers == 0) {
    return absl::InvalidArgumentError("bad node peer options");
  }
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> ca = ReadPem(options.server_ca_file, "CA file");
  if (!ca.ok()) return ca.status();
  absl::StatusOr<std::string> cert =
      ReadPem(options.client_cert_file, "node certificate file");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key =
      ReadPem(options.client_key_file, "node key file");
  if (!key.ok()) return key.status();
  ssl.pem_root_certs = *std::move(ca);
  ssl.pem_cert_chain = *std::move(cert);
  ssl.pem_private_key = *std::move(key);
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      grpc::SslCredentials(ssl);
  Wipe(ssl.pem_private_key);  // gRPC keeps its own copy
  if (credentials == nullptr) {
    return absl::InvalidArgumentError("node certificate or key is unusable");
  }
  return std::unique_ptr<GrpcCvvPeers>(
      new GrpcCvvPeers(options, std::move(credentials)));
}

pb::NodePeer::Stub* GrpcCvvPeers::StubFor(absl::string_view holder) const {
  absl::MutexLock lock(&mu_);
  auto it = stubs_.find(holder);
  if (it != stubs_.end()) return it->second.get();
  if (stubs_.size() >= options_.max_peers) return nullptr;
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(
      std::string(holder), credentials_, grpc::ChannelArguments());
  auto inserted =
      stubs_.emplace(std::string(holder), pb::NodePeer::NewStub(channel));
  return inserted.first->second.get();
}

void GrpcCvvPeers::TakeHeldCvv(absl::string_view holder,
                               absl::string_view token, TakeDone done) const {
  pb::NodePeer::Stub* stub = StubFor(holder);
  if (stub == nullptr) {
    std::move(done)(absl::UnavailableError(
        "too many other nodes named as CVV holders; none asked"));
    return;
  }
  auto* call = new TakeCall;
  call->context.set_deadline(
      absl::ToChronoTime(absl::Now() + options_.deadline));
  call->request.set_token(std::string(token));
  call->done = std::move(done);
  stub->async()->TakeHeldCvv(
      &call->context, &call->request, &call->response,
      [call](grpc::Status status) {
        std::unique_ptr<TakeCall> owned(call);
        std::string* cvv = owned->response.mutable_cvv();
        absl::StatusOr<std::optional<crypto::SecretBytes>> result;
        if (!status.ok()) {
          // gRPC's own codes (UNAVAILABLE, DEADLINE_EXCEEDED...); the
          // message is the peer's, which never echoes a value.
          result =
              absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                           status.error_message());
        } else if (cvv->empty()) {
          result = std::nullopt;
        } else if (!vault::ValidateCvv(*cvv).ok()) {
          result = absl::DataLossError("another node answered a malformed CVV");
        } else {
          result =
              std::optional<crypto::SecretBytes>(crypto::SecretBytes(*cvv));
        }
        Wipe(*cvv);
        std::move(owned->done)(std::move(result));
      });
}

}  // namespace cardvault::service
