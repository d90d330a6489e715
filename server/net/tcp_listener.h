// The vault's TCP listener: accepts connections itself, admits them by the
// ConnectionTable's limits and hands each admitted socket to its owner
// (gRPC, over mutual TLS); refused peers are reset at once, before TLS, so
// a peer without a certificate costs no handshake and no gRPC memory.
//
// A second, private socket (a Unix socket in a directory only the vault's
// user may enter) takes the watchdog's probes through the same accept loop
// and the same gRPC credentials, with a small limit of its own: no flood on
// the public port can crowd the probe out and make the watchdog restart a
// vault that is serving.
//
// It never stops accepting: a failed accept (EMFILE, ENFILE, ENOBUFS, ...)
// is counted, logged at a bounded rate and retried after a backoff, and on
// EMFILE a spare descriptor is given up to shed the waiting connection, so
// the accept queue drains instead of filling (gRPC 1.51's own listener stops
// for good there). Handed-off sockets are watched by descriptor and inode:
// when gRPC closes one, its place is free again.
//
// Thread safety: thread-safe; one accept thread, started by Start.
#ifndef CARDVAULT_SERVER_NET_TCP_LISTENER_H_
#define CARDVAULT_SERVER_NET_TCP_LISTENER_H_

#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/net/connection_table.h"
#include "server/util/log.h"

namespace cardvault::net {

class TcpListener {
 public:
  struct Options {
    // Required. host:port ("127.0.0.1:9443", "[::]:9443", "localhost:0");
    // every address the host resolves to is bound, port 0 picks one.
    std::string address;
    // Kernel accept queue per listening socket. Default 1024.
    int backlog = 1024;
    ConnectionTable::Options admission;
    // How often handed-off sockets are checked for having closed.
    // Default 200 ms.
    absl::Duration sweep_interval = absl::Milliseconds(200);
    // Longest pause after failed accepts; the first is 10 ms, doubling.
    absl::Duration max_backoff = absl::Seconds(1);
    std::function<absl::Time()> now = [] { return absl::Now(); };
    // Where to create the probe socket ("" = none). Its directory must exist
    // and be private.
    std::string probe_socket_path;
  };

  // Probe connections open at once (the watchdog needs one).
  static constexpr size_t kMaxProbeConnections = 4;

  // Receives each admitted socket (non-blocking, close-on-exec) and owns it
  // from then on; `listener_fd` is the socket it was accepted on.
  using Handoff = std::function<void(int listener_fd, int fd)>;

  // Counters since start, and the table's state at the last sweep.
  struct Stats {
    uint64_t admitted = 0;
    uint64_t refused_total = 0;       // max_connections reached
    uint64_t refused_per_source = 0;  // max_per_source reached
    uint64_t refused_pending = 0;     // max_pending reached
    uint64_t refused_rate = 0;        // max_new_per_second reached
    uint64_t evicted = 0;             // pending ones replaced by newcomers
    uint64_t accept_failures = 0;     // accept(2) errors of any kind
    uint64_t open = 0;
    uint64_t pending = 0;
  };

  // Binds and listens (so the port is known, and a bad address fails start)
  // but accepts nothing until Start.
  static absl::StatusOr<std::unique_ptr<TcpListener>> Create(Options options);

  TcpListener(const TcpListener&) = delete;
  TcpListener& operator=(const TcpListener&) = delete;
  // Stops accepting and closes the listening sockets; handed-off sockets
  // stay with their owner.
  ~TcpListener();

  void Start(Handoff handoff);
  // Stops accepting and closes the listening sockets (also done by the
  // destructor); NoteServed and stats stay usable until destruction.
  void Stop();
  int port() const { return port_; }
  const ConnectionTable::Options& admission() const {
    return options_.admission;
  }
  Stats stats() const;

  // Whether NoteServed has anything to look up (cheap; any thread).
  bool WantsServedPeers() const { return awaiting_call_.load() > 0; }
  // A call arrived on the connection of gRPC peer `peer`
  // ("ipv4:10.0.0.7:51234", "ipv6:[2001:db8::1]:443"): its handshake is
  // done, it is no longer pending. Thread-safe.
  void NoteServed(absl::string_view peer);

 private:
  TcpListener(Options options, std::vector<int> listen_fds, int probe_fd,
              int port, int wake_fd, int spare_fd);
  void Run();
  // Accepts what is waiting on `listen_fd`; false when accept failed.
  bool AcceptSome(int listen_fd);
  void Admit(int listen_fd, int fd, const sockaddr_storage& peer);
  void AdmitProbe(int fd);
  // Marks in the table what NoteServed reported.
  void TakeServed();
  void SweepClosed();

  const Options options_;
  const std::vector<int> listen_fds_;
  const int probe_fd_;  // -1 without a probe socket
  const int port_;
  const int wake_fd_;  // eventfd: Stop wakes the accept thread
  int spare_fd_;       // given up on EMFILE to shed one waiting connection
  Handoff handoff_;
  ConnectionTable table_;        // accept thread only
  ConnectionTable probe_table_;  // accept thread only
  // Pending connections by gRPC peer string, and those NoteServed found.
  absl::Mutex served_mu_;
  absl::flat_hash_map<std::string, std::pair<Connection, absl::Time>>
      awaiting_call_by_peer_ ABSL_GUARDED_BY(served_mu_);
  std::vector<Connection> served_ ABSL_GUARDED_BY(served_mu_);
  std::atomic<size_t> awaiting_call_{0};
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> admitted_{0}, refused_total_{0}, refused_per_source_{0},
      refused_pending_{0}, refused_rate_{0}, evicted_{0}, accept_failures_{0},
      open_{0}, pending_{0};
  util::LogRate refusal_log_{1};
  util::LogRate failure_log_{1};
  std::thread thread_;
};

// The source of `peer` as the limits count it, without the port: an IPv4
// address (one mapped into IPv6 too, so one host has one key), or an IPv6
// /64 ("2001:db8:1:2::/64"), since one host may hold a whole /64.
std::string SourceAddress(const sockaddr_storage& peer);

// `peer` as gRPC names it: "ipv4:ADDRESS:PORT" or "ipv6:[ADDRESS]:PORT".
std::string GrpcPeerName(const sockaddr_storage& peer);

// A new private directory (0700) for the probe socket,
// /tmp/cardvaultd-probe-PID-XXXXXX; those of processes no longer running
// (killed with -9, so never cleaned) owned by this user are removed first.
absl::StatusOr<std::string> MakeProbeDirectory();

}  // namespace cardvault::net

#endif  // CARDVAULT_SERVER_NET_TCP_LISTENER_H_
