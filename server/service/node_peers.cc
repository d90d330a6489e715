#include "server/service/node_peers.h"

#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "openssl/crypto.h"
#include "server/config/text_proto.h"
#include "server/crypto/certificate_info.h"
#include "server/crypto/secret_bytes.h"
#include "server/service/caller_context.h"
#include "server/service/request_checks.h"
#include "server/service/status_conversion.h"
#include "server/util/node_address.h"
#include "server/vault/card.h"

namespace cardvault::service {
namespace {

namespace pb = ::cardvault::v1;

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
  if (options.deadline <= absl::ZeroDuration() || options.max_peers == 0 ||
      options.max_in_flight_per_peer == 0) {
    return absl::InvalidArgumentError("bad node peer options");
  }
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> ca =
      config::ReadTextFile(options.server_ca_file, "CA file");
  if (!ca.ok()) return ca.status();
  absl::StatusOr<std::string> cert =
      config::ReadTextFile(options.client_cert_file, "node certificate file");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key =
      config::ReadTextFile(options.client_key_file, "node key file");
  if (!key.ok()) return key.status();
  if (absl::Status pair = crypto::CheckKeyPair(*cert, *key); !pair.ok()) {
    Wipe(*key);
    return absl::InvalidArgumentError(
        "node certificate and key do not parse or do not match");
  }
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

void GrpcCvvPeers::TakeHeldCvv(absl::string_view holder,
                               absl::string_view token, TakeDone done) const {
  // The address comes from the store: host:port only, never a scheme or a
  // resolver of a database writer's choosing.
  if (!util::IsNodeAddress(holder)) {
    std::move(done)(
        absl::InvalidArgumentError("CVV holder is not a node address"));
    return;
  }
  std::shared_ptr<pb::NodePeer::Stub> stub;
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    auto it = peers_.find(holder);
    if (it == peers_.end()) {
      if (peers_.size() >= options_.max_peers) {
        auto idle = peers_.end();
        for (auto p = peers_.begin(); p != peers_.end(); ++p) {
          if (p->second.in_flight == 0 && p->second.waiting.empty() &&
              (idle == peers_.end() ||
               p->second.last_used < idle->second.last_used)) {
            idle = p;
          }
        }
        if (idle != peers_.end()) peers_.erase(idle);
      }
      if (peers_.size() < options_.max_peers) {
        Peer peer;
        peer.stub = pb::NodePeer::NewStub(
            grpc::CreateCustomChannel(absl::StrCat("dns:///", holder),
                                      credentials_, grpc::ChannelArguments()));
        it = peers_.emplace(std::string(holder), std::move(peer)).first;
      }
    }
    if (it == peers_.end()) {
      refused = absl::UnavailableError(
          "every other node's channel is busy; none asked");
    } else {
      Peer& peer = it->second;
      peer.last_used = ++uses_;
      if (peer.in_flight < options_.max_in_flight_per_peer) {
        ++peer.in_flight;
        stub = peer.stub;
      } else if (peer.waiting.size() < options_.max_waiting_per_peer) {
        peer.waiting.push_back({std::string(token), std::move(done)});
        return;
      } else {
        refused = absl::UnavailableError("too many calls wait for that node");
      }
    }
  }
  if (stub == nullptr) {
    std::move(done)(refused);
    return;
  }
  Start(std::move(stub), std::string(holder), std::string(token),
        std::move(done));
}

GrpcCvvPeers::~GrpcCvvPeers() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](absl::flat_hash_map<std::string, Peer>* peers) {
        for (const auto& [address, peer] : *peers) {
          if (peer.in_flight > 0 || !peer.waiting.empty()) return false;
        }
        return true;
      },
      &peers_));
}

void GrpcCvvPeers::Finished(const std::string& holder) const {
  std::shared_ptr<pb::NodePeer::Stub> stub;
  Waiting next;
  {
    absl::MutexLock lock(&mu_);
    auto it = peers_.find(holder);
    if (it == peers_.end()) return;
    Peer& peer = it->second;
    if (peer.waiting.empty()) {
      --peer.in_flight;
      return;
    }
    next = std::move(peer.waiting.front());
    peer.waiting.pop_front();
    stub = peer.stub;
  }
  Start(std::move(stub), holder, std::move(next.token), std::move(next.done));
}

void GrpcCvvPeers::Start(std::shared_ptr<pb::NodePeer::Stub> stub,
                         std::string holder, std::string token,
                         TakeDone done) const {
  auto* call = new TakeCall;
  call->context.set_deadline(
      absl::ToChronoTime(absl::Now() + options_.deadline));
  call->request.set_token(std::move(token));
  call->done = std::move(done);
  pb::NodePeer::Stub* raw = stub.get();
  raw->async()->TakeHeldCvv(
      &call->context, &call->request, &call->response,
      [this, call, stub = std::move(stub),
       holder = std::move(holder)](grpc::Status status) {
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
        owned.reset();
        Finished(holder);
      });
}

}  // namespace cardvault::service
