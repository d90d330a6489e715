#include "server/net/tcp_listener.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "server/util/descriptor_budget.h"

namespace cardvault::net {
namespace {

// Accepts per wake-up per socket, so one busy socket cannot starve the
// sweep.
constexpr int kMaxAcceptsPerWake = 256;
constexpr absl::Duration kFirstBackoff = absl::Milliseconds(10);

absl::Status SplitHostPort(absl::string_view address, std::string* host,
                           std::string* port) {
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon + 1 == address.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen address \"", address, "\" is not host:port"));
  }
  absl::string_view h = address.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') {
    h = h.substr(1, h.size() - 2);
  } else if (absl::StrContains(h, ':')) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen address \"", address,
                     "\": an IPv6 address needs brackets, as [::1]:9443"));
  }
  *host = std::string(h);
  *port = std::string(address.substr(colon + 1));
  int unused = 0;
  if (port->size() > 5 ||
      !std::all_of(port->begin(), port->end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(*port, &unused) || unused > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen address \"", address, "\" has no valid port"));
  }
  return absl::OkStatus();
}

int BoundPort(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 0;
  if (addr.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  }
  return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
}

void SetPort(addrinfo* ai, int port) {
  if (ai->ai_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_port = htons(port);
  } else if (ai->ai_family == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_port = htons(port);
  }
}

// Closes with a reset: the refused peer learns at once, and no TIME_WAIT
// is left on the server's side.
void Reset(int fd) {
  linger l{.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  close(fd);
}

uint64_t InodeOf(int fd) {
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return 0;
  return st.st_ino;
}

absl::string_view RefusalName(ConnectionTable::Refusal r) {
  switch (r) {
    case ConnectionTable::Refusal::kTotal:
      return "max_connections";
    case ConnectionTable::Refusal::kPerSource:
      return "max_connections_per_source";
    case ConnectionTable::Refusal::kPending:
      return "max_pending_handshakes";
    case ConnectionTable::Refusal::kRate:
      return "max_new_connections_per_second_per_source";
    case ConnectionTable::Refusal::kNone:
      break;
  }
  return "none";
}

// A peer's address and port, an IPv4 address mapped into IPv6 unmapped, so
// that one host has one form in every key made from it.
struct PeerAddress {
  int family = AF_UNSPEC;
  in_addr v4{};
  in6_addr v6{};
  uint16_t port = 0;
};

PeerAddress Unmapped(const sockaddr_storage& peer) {
  PeerAddress a;
  if (peer.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&peer);
    a.family = AF_INET;
    a.v4 = in->sin_addr;
    a.port = ntohs(in->sin_port);
  } else if (peer.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&peer);
    a.port = ntohs(in6->sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      a.family = AF_INET;
      std::memcpy(&a.v4, &in6->sin6_addr.s6_addr[12], sizeof(a.v4));
    } else {
      a.family = AF_INET6;
      a.v6 = in6->sin6_addr;
    }
  }
  return a;
}

std::string AddressText(int family, const void* address) {
  char text[INET6_ADDRSTRLEN] = {};
  inet_ntop(family, address, text, sizeof(text));
  return text;
}

}  // namespace

std::string SourceAddress(const sockaddr_storage& peer) {
  PeerAddress a = Unmapped(peer);
  if (a.family == AF_INET) return AddressText(AF_INET, &a.v4);
  if (a.family != AF_INET6) return "unknown";
  std::memset(&a.v6.s6_addr[8], 0, 8);
  return absl::StrCat(AddressText(AF_INET6, &a.v6), "/64");
}

std::string GrpcPeerName(const sockaddr_storage& peer) {
  const PeerAddress a = Unmapped(peer);
  if (a.family == AF_INET) {
    return absl::StrCat("ipv4:", AddressText(AF_INET, &a.v4), ":", a.port);
  }
  if (a.family != AF_INET6) return "";
  return absl::StrCat("ipv6:[", AddressText(AF_INET6, &a.v6), "]:", a.port);
}

absl::StatusOr<std::string> MakeProbeDirectory() {
  constexpr absl::string_view kPrefix = "cardvaultd-probe-";
  if (DIR* tmp = opendir("/tmp")) {
    while (dirent* e = readdir(tmp)) {
      absl::string_view name = e->d_name;
      if (!absl::ConsumePrefix(&name, kPrefix)) continue;
      int pid = 0;
      const size_t dash = name.find('-');
      if (dash == absl::string_view::npos ||
          !absl::SimpleAtoi(name.substr(0, dash), &pid) || pid <= 0 ||
          kill(pid, 0) == 0 || errno != ESRCH) {
        continue;
      }
      const std::string dir = absl::StrCat("/tmp/", e->d_name);
      struct stat st {};
      if (lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) ||
          st.st_uid != geteuid()) {
        continue;
      }
      unlink((dir + "/probe.sock").c_str());
      rmdir(dir.c_str());
    }
    closedir(tmp);
  }
  std::string dir = absl::StrCat("/tmp/", kPrefix, getpid(), "-XXXXXX");
  if (mkdtemp(dir.data()) == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "cannot make the probe directory in /tmp: ", std::strerror(errno)));
  }
  return dir;
}

absl::StatusOr<std::unique_ptr<TcpListener>> TcpListener::Create(
    Options options) {
  std::string host, port_text;
  if (absl::Status s = SplitHostPort(options.address, &host, &port_text);
      !s.ok()) {
    return s;
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(),
                           port_text.c_str(), &hints, &found);
      rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve listen address \"", options.address,
                     "\": ", gai_strerror(rc)));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> owner(found,
                                                           &freeaddrinfo);
  size_t count = 0;
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) ++count;
  std::vector<int> fds;
  auto close_all = [&fds] {
    for (int fd : fds) close(fd);
  };
  int port = 0;
  std::string last_error;
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    if (port != 0) SetPort(ai, port);
    int fd =
        socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
               ai->ai_protocol);
    if (fd < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (ai->ai_family == AF_INET6) {
      // Dual-stack only when the name resolves to this address alone.
      const int v6only = count > 1 ? 1 : 0;
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
    }
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 ||
        listen(fd, options.backlog) != 0) {
      last_error = std::strerror(errno);
      close(fd);
      continue;
    }
    if (port == 0) port = BoundPort(fd);
    fds.push_back(fd);
  }
  if (fds.empty()) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.address, ": ", last_error));
  }
  int probe = -1;
  if (!options.probe_socket_path.empty()) {
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    if (options.probe_socket_path.size() >= sizeof(un.sun_path)) {
      close_all();
      return absl::InvalidArgumentError("probe socket path is too long");
    }
    std::memcpy(un.sun_path, options.probe_socket_path.data(),
                options.probe_socket_path.size());
    unlink(options.probe_socket_path.c_str());
    probe = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (probe < 0 ||
        bind(probe, reinterpret_cast<sockaddr*>(&un), sizeof(un)) != 0 ||
        chmod(options.probe_socket_path.c_str(), 0600) != 0 ||
        listen(probe, static_cast<int>(kMaxProbeConnections)) != 0) {
      const std::string error = std::strerror(errno);
      if (probe >= 0) close(probe);
      close_all();
      return absl::UnavailableError(
          absl::StrCat("cannot listen on the probe socket ",
                       options.probe_socket_path, ": ", error));
    }
  }
  const int wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  const int spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (wake < 0 || spare < 0) {
    close_all();
    if (probe >= 0) close(probe);
    if (wake >= 0) close(wake);
    if (spare >= 0) close(spare);
    return absl::ResourceExhaustedError(
        absl::StrCat("listener descriptors: ", std::strerror(errno)));
  }
  return std::unique_ptr<TcpListener>(new TcpListener(
      std::move(options), std::move(fds), probe, port, wake, spare));
}

TcpListener::TcpListener(Options options, std::vector<int> listen_fds,
                         int probe_fd, int port, int wake_fd, int spare_fd)
    : options_(std::move(options)),
      listen_fds_(std::move(listen_fds)),
      probe_fd_(probe_fd),
      port_(port),
      wake_fd_(wake_fd),
      spare_fd_(spare_fd),
      table_(options_.admission),
      probe_table_({.max_connections = kMaxProbeConnections,
                    .max_per_source = kMaxProbeConnections,
                    .max_pending = kMaxProbeConnections,
                    .handshake_deadline = options_.admission.handshake_deadline,
                    .max_new_per_second = 0}) {}

TcpListener::~TcpListener() {
  Stop();
  close(wake_fd_);
  if (spare_fd_ >= 0) close(spare_fd_);
}

void TcpListener::Stop() {
  if (stop_.exchange(true)) return;
  const uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
  for (int fd : listen_fds_) close(fd);
  if (probe_fd_ >= 0) {
    close(probe_fd_);
    unlink(options_.probe_socket_path.c_str());
  }
}

void TcpListener::Start(Handoff handoff) {
  handoff_ = std::move(handoff);
  thread_ = std::thread([this] { Run(); });
}

TcpListener::Stats TcpListener::stats() const {
  return {.admitted = admitted_.load(),
          .refused_total = refused_total_.load(),
          .refused_per_source = refused_per_source_.load(),
          .refused_pending = refused_pending_.load(),
          .refused_rate = refused_rate_.load(),
          .evicted = evicted_.load(),
          .accept_failures = accept_failures_.load(),
          .open = open_.load(),
          .pending = pending_.load()};
}

void TcpListener::Run() {
  std::vector<int> accepting = listen_fds_;
  if (probe_fd_ >= 0) accepting.push_back(probe_fd_);
  std::vector<pollfd> polled;
  for (int fd : accepting) polled.push_back({fd, POLLIN, 0});
  polled.push_back({wake_fd_, POLLIN, 0});
  absl::Time next_sweep = options_.now();
  absl::Duration backoff = absl::ZeroDuration();
  while (!stop_) {
    const absl::Time now = options_.now();
    if (now >= next_sweep) {
      SweepClosed();
      next_sweep = now + options_.sweep_interval;
    }
    // While backing off, only the wake-up descriptor is watched.
    const absl::Duration wait =
        backoff > absl::ZeroDuration()
            ? backoff
            : std::max(absl::ZeroDuration(), next_sweep - now);
    const nfds_t watched = backoff > absl::ZeroDuration()
                               ? 0
                               : static_cast<nfds_t>(accepting.size());
    pollfd* first = watched == 0 ? &polled.back() : polled.data();
    const int ready =
        poll(first, watched + 1,
             static_cast<int>(absl::ToInt64Milliseconds(wait)) + 1);
    if (stop_) break;
    if (ready < 0) continue;  // EINTR
    if (watched == 0) {
      // The backoff has passed: try the sockets again.
      for (size_t i = 0; i < accepting.size(); ++i) polled[i].revents = POLLIN;
    }
    bool failed = false;
    for (size_t i = 0; i < accepting.size(); ++i) {
      if ((polled[i].revents & POLLIN) != 0 && !AcceptSome(accepting[i])) {
        failed = true;
      }
      polled[i].revents = 0;
    }
    backoff = failed ? std::min(options_.max_backoff,
                                std::max(kFirstBackoff, backoff * 2))
                     : absl::ZeroDuration();
  }
}

bool TcpListener::AcceptSome(int listen_fd) {
  for (int i = 0; i < kMaxAcceptsPerWake; ++i) {
    sockaddr_storage peer{};
    socklen_t len = sizeof(peer);
    const int fd = accept4(listen_fd, reinterpret_cast<sockaddr*>(&peer), &len,
                           SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      if (listen_fd == probe_fd_) {
        AdmitProbe(fd);
      } else {
        Admit(listen_fd, fd, peer);
      }
      continue;
    }
    const int error = errno;
    switch (error) {
      case EAGAIN:
        return true;
      case EINTR:
      case ECONNABORTED:
      case EPROTO:
        continue;
      default:
        break;
    }
    ++accept_failures_;
    if (error == EMFILE || error == ENFILE) {
      util::NoteDescriptorExhaustion("accepting connections");
      // Sheds the connection at the head of the queue: without it the
      // queue stays full and every later handshake times out.
      if (spare_fd_ >= 0) {
        close(spare_fd_);
        const int shed = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (shed >= 0) Reset(shed);
        spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
      }
    }
    failure_log_.Log(
        util::Severity::kError,
        absl::StrCat("ALERT accepting a connection failed (",
                     std::strerror(error), "); retrying after a backoff"));
    return false;
  }
  return true;
}

void TcpListener::NoteServed(absl::string_view peer) {
  // gRPC 1.51 URI-escapes an IPv6 peer ("ipv6:%5B::1%5D:443").
  const std::string name = absl::StrReplaceAll(
      peer,
      {{"%5B", "["}, {"%5D", "]"}, {"%5b", "["}, {"%5d", "]"}, {"%25", "%"}});
  absl::MutexLock lock(&served_mu_);
  auto it = awaiting_call_by_peer_.find(name);
  if (it == awaiting_call_by_peer_.end()) return;
  served_.push_back(it->second.first);
  awaiting_call_by_peer_.erase(it);
  awaiting_call_ = awaiting_call_by_peer_.size();
}

void TcpListener::TakeServed() {
  std::vector<Connection> served;
  {
    absl::MutexLock lock(&served_mu_);
    served.swap(served_);
  }
  for (const Connection& c : served) table_.MarkServed(c);
}

void TcpListener::AdmitProbe(int fd) {
  const absl::Time now = options_.now();
  if (!probe_table_.Admit("probe", Connection{fd, InodeOf(fd)}, now).admitted) {
    Reset(fd);
    refusal_log_.Log(util::Severity::kWarning,
                     "probe connection refused: too many open");
    return;
  }
  handoff_(probe_fd_, fd);
}

void TcpListener::Admit(int listen_fd, int fd, const sockaddr_storage& peer) {
  TakeServed();
  const std::string source = SourceAddress(peer);
  const absl::Time now = options_.now();
  const Connection connection{fd, InodeOf(fd)};
  const ConnectionTable::Decision decision =
      table_.Admit(source, connection, now);
  if (!decision.admitted) {
    Reset(fd);
    switch (decision.refusal) {
      case ConnectionTable::Refusal::kTotal:
        ++refused_total_;
        break;
      case ConnectionTable::Refusal::kPerSource:
        ++refused_per_source_;
        break;
      case ConnectionTable::Refusal::kRate:
        ++refused_rate_;
        break;
      default:
        ++refused_pending_;
        break;
    }
    refusal_log_.Log(
        util::Severity::kWarning,
        absl::StrCat("connection from ", source, " refused: listener.",
                     RefusalName(decision.refusal), " reached"));
    return;
  }
  if (decision.evicted.has_value()) {
    // Only if the number still holds that socket: it may have closed and
    // been reused since the last sweep.
    const Connection& victim = *decision.evicted;
    if (InodeOf(victim.fd) == victim.inode) shutdown(victim.fd, SHUT_RDWR);
    ++evicted_;
  }
  ++admitted_;
  {
    // Two pending connections under one peer name (the same source port to
    // two local addresses): neither is marked, both age out as pending.
    absl::MutexLock lock(&served_mu_);
    auto [it, inserted] =
        awaiting_call_by_peer_.try_emplace(GrpcPeerName(peer), connection, now);
    if (!inserted) awaiting_call_by_peer_.erase(it);
    awaiting_call_ = awaiting_call_by_peer_.size();
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  handoff_(listen_fd, fd);
}

void TcpListener::SweepClosed() {
  TakeServed();
  const absl::Time now = options_.now();
  const auto still_open = [](const Connection& c) {
    return InodeOf(c.fd) == c.inode;
  };
  table_.Sweep(still_open, now);
  probe_table_.Sweep(still_open, now);
  {
    // Past the deadline a connection is no longer pending either way.
    absl::MutexLock lock(&served_mu_);
    absl::erase_if(awaiting_call_by_peer_, [&](const auto& entry) {
      return now - entry.second.second >= options_.admission.handshake_deadline;
    });
    awaiting_call_ = awaiting_call_by_peer_.size();
  }
  open_ = table_.open();
  pending_ = table_.pending(now);
}

}  // namespace cardvault::net
