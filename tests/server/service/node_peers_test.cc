// Hostile tests of GrpcCvvPeers (review of "CVVs across nodes"): what the
// asking node does with addresses read from the store.
#include "server/service/node_peers.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/vault/cvv_holders.h"

namespace cardvault::service {
namespace {

std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/node_peers_test_", name);
  std::ofstream(path, std::ios::trunc) << text;
  return path;
}

GrpcCvvPeers::Options GarbageOptions(size_t max_peers) {
  return {.server_ca_file = WriteFile("ca.pem", "not a certificate"),
          .client_cert_file = WriteFile("cert.pem", "not a certificate"),
          .client_key_file = WriteFile("key.pem", "not a key"),
          .deadline = absl::Milliseconds(300),
          .max_peers = max_peers};
}

// A self-signed pair that gRPC accepts, so that channels really connect.
GrpcCvvPeers::Options UsableOptions(size_t max_peers) {
  const std::string dir = ::testing::TempDir();
  const std::string cert = absl::StrCat(dir, "/node_peers_test_self.crt");
  const std::string key = absl::StrCat(dir, "/node_peers_test_self.key");
  const std::string command = absl::StrCat(
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
      "-nodes -days 1 -subj /CN=node -keyout ",
      key, " -out ", cert, " >/dev/null 2>&1");
  EXPECT_EQ(std::system(command.c_str()), 0);
  return {.server_ca_file = cert,
          .client_cert_file = cert,
          .client_key_file = key,
          .deadline = absl::Milliseconds(300),
          .max_peers = max_peers};
}

absl::Status Take(const GrpcCvvPeers& peers, const std::string& holder) {
  absl::Notification done;
  absl::Status out;
  peers.TakeHeldCvv(holder, "tok_aaaaaaaaaaaaaaaaaaaaaaaaaa",
                    [&](absl::StatusOr<std::optional<crypto::SecretBytes>> r) {
                      out = r.status();
                      done.Notify();
                    });
  done.WaitForNotification();
  return out;
}

// cardvaultd checks the cluster certificate and key at start ("cluster
// client certificate"); files that hold no PEM at all should not pass.
TEST(NodePeersHostileTest, AnUnusableCertificateOrKeyIsRefusedAtCreate) {
  EXPECT_FALSE(GrpcCvvPeers::Create(GarbageOptions(64)).ok());
}

// Addresses come from the store: stale ones (nodes replaced, IPs changed)
// or a database writer's must not stop this node asking the live nodes.
TEST(NodePeersHostileTest, DeadAddressesDoNotUseUpThePeerTableForever) {
  auto peers = GrpcCvvPeers::Create(UsableOptions(2));
  ASSERT_TRUE(peers.ok()) << peers.status();
  EXPECT_NE(Take(**peers, "127.0.0.1:1").message(),
            "too many other nodes named as CVV holders; none asked");
  EXPECT_NE(Take(**peers, "127.0.0.1:2").message(),
            "too many other nodes named as CVV holders; none asked");
  const absl::Status live = Take(**peers, "127.0.0.1:3");
  EXPECT_NE(live.message(),
            "too many other nodes named as CVV holders; none asked")
      << "after two dead addresses, a third node is never asked: " << live;
}

// The holder address is a gRPC target URI: a row written by a database
// writer picks the resolver and, with dns://, the DNS server asked, or a
// Unix socket on the node's host.
TEST(NodePeersHostileTest, AHolderAddressCannotPickASchemeOrDnsServer) {
  auto peers = GrpcCvvPeers::Create(UsableOptions(8));
  ASSERT_TRUE(peers.ok()) << peers.status();

  // A Unix socket on this host.
  const std::string sock_path =
      absl::StrCat("/tmp/h-attack-node-peers-", getpid(), ".sock");
  unlink(sock_path.c_str());
  int unix_fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  snprintf(un.sun_path, sizeof(un.sun_path), "%s", sock_path.c_str());
  ASSERT_EQ(bind(unix_fd, reinterpret_cast<sockaddr*>(&un), sizeof(un)), 0);
  ASSERT_EQ(listen(unix_fd, 4), 0);
  const std::string unix_target = absl::StrCat("unix:", sock_path);
  // Such a row is refused by the store's format, and refused again by the
  // node that would connect.
  EXPECT_FALSE(vault::EncodeCvvHolder(
                   {.expires = absl::UnixEpoch(), .address = unix_target})
                   .ok());
  (void)Take(**peers, unix_target);
  timeval tv{0, 200000};
  setsockopt(unix_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  const int accepted = accept(unix_fd, nullptr, nullptr);
  EXPECT_LT(accepted, 0) << "the node connected to " << unix_target;
  if (accepted >= 0) close(accepted);
  close(unix_fd);
  unlink(sock_path.c_str());

  // A DNS server of the writer's choosing.
  int udp = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(udp, reinterpret_cast<sockaddr*>(&in), sizeof(in)), 0);
  socklen_t len = sizeof(in);
  getsockname(udp, reinterpret_cast<sockaddr*>(&in), &len);
  const std::string dns_target = absl::StrCat(
      "dns://127.0.0.1:", ntohs(in.sin_port), "/holder.example:9443");
  // Such a row is refused by the store's format, and refused again by the
  // node that would connect.
  EXPECT_FALSE(vault::EncodeCvvHolder(
                   {.expires = absl::UnixEpoch(), .address = dns_target})
                   .ok());
  setsockopt(udp, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  absl::Status dns_status = Take(**peers, dns_target);
  char buf[512];
  const ssize_t got = recv(udp, buf, sizeof(buf), 0);
  EXPECT_LT(got, 0) << "the node sent a DNS query to the row's server ("
                    << dns_status << ")";
  close(udp);
}

}  // namespace
}  // namespace cardvault::service
