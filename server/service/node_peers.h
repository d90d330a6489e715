// Calls between the nodes that share one store: the NodePeer service, by
// which another node takes a CVV this node holds, and this node's side of
// calling it (vault::CvvPeers over mutual TLS). Translation only; the vault
// decides and records.
//
// Thread safety: both classes are thread-safe.
#ifndef CARDVAULT_SERVER_SERVICE_NODE_PEERS_H_
#define CARDVAULT_SERVER_SERVICE_NODE_PEERS_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cardvault/v1/node_peer.grpc.pb.h"
#include "grpcpp/security/credentials.h"
#include "server/service/calls_in_flight.h"
#include "server/vault/cvv_holders.h"
#include "server/vault/vault.h"

namespace cardvault::service {

class NodePeerService final : public ::cardvault::v1::NodePeer::Service {
 public:
  // `vault` and `calls` must outlive the service.
  NodePeerService(const vault::Vault* vault, CallsInFlight* calls)
      : vault_(vault), calls_(calls) {}

  grpc::Status TakeHeldCvv(
      grpc::ServerContext* context,
      const ::cardvault::v1::TakeHeldCvvRequest* request,
      ::cardvault::v1::TakeHeldCvvResponse* response) override;

 private:
  const vault::Vault* const vault_;
  CallsInFlight* const calls_;
};

class GrpcCvvPeers final : public vault::CvvPeers {
 public:
  struct Options {
    // Required. PEM bundle the other nodes' server certificates chain to.
    std::string server_ca_file;
    // Required. This node's client certificate chain and key (role NODE).
    std::string client_cert_file;
    std::string client_key_file;
    // Deadline of one call. Default 1 s.
    absl::Duration deadline = absl::Seconds(1);
    // Most nodes a channel is kept open to (the addresses come from the
    // store); past it the least recently used idle one is closed. Default 64.
    size_t max_peers = 64;
    // Calls in flight to one node; more wait, so that a batch of CVVs held
    // by one node does not take all of its threads. Default 4.
    size_t max_in_flight_per_peer = 4;
    // Calls waiting for one node; past it UNAVAILABLE. Default 4,096.
    size_t max_waiting_per_peer = 4096;
  };

  // Reads the files; NOT_FOUND or INVALID_ARGUMENT when one is missing.
  static absl::StatusOr<std::unique_ptr<GrpcCvvPeers>> Create(
      const Options& options);

  // Waits for the calls in flight (each ends within the deadline).
  ~GrpcCvvPeers() override;

  void TakeHeldCvv(absl::string_view holder, absl::string_view token,
                   TakeDone done) const override;

 private:
  GrpcCvvPeers(Options options,
               std::shared_ptr<grpc::ChannelCredentials> credentials)
      : options_(std::move(options)), credentials_(std::move(credentials)) {}

  struct Waiting {
    std::string token;
    TakeDone done;
  };
  struct Peer {
    std::shared_ptr<::cardvault::v1::NodePeer::Stub> stub;
    size_t in_flight = 0;
    std::deque<Waiting> waiting;
    uint64_t last_used = 0;
  };

  // Starts one call; `stub` stays alive until it completes.
  void Start(std::shared_ptr<::cardvault::v1::NodePeer::Stub> stub,
             std::string holder, std::string token, TakeDone done) const;
  // One call to `holder` ended: starts the next waiting one, if any.
  void Finished(const std::string& holder) const;

  const Options options_;
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  mutable absl::Mutex mu_;
  mutable absl::flat_hash_map<std::string, Peer> peers_ ABSL_GUARDED_BY(mu_);
  mutable uint64_t uses_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_NODE_PEERS_H_
