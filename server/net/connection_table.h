// Which TCP connections the listener admits, decided before gRPC owns a
// socket: at most `max_connections` open, `max_per_source` from one source
// address, and `max_pending` that may still be in their TLS handshake.
//
// A connection is pending from admission until its first call (the server
// saw a request on it: mutual TLS done) or the handshake deadline, when
// gRPC closes one still handshaking; so this bounds what gRPC can be
// handshaking. When the pending (or total) budget is full, a newcomer takes
// the place of the oldest pending connection of the source holding the most
// pending ones, if that source holds at least two more than the
// newcomer's: a flood from some addresses cannot lock the others out. A
// connection that has carried a call is never evicted. Each source may open
// `max_new_per_second` connections a second (a burst of twice as many), so
// one address cannot keep the server busy with TLS handshakes.
//
// Thread safety: thread-compatible; the listener's thread owns it.
#ifndef CARDVAULT_SERVER_NET_CONNECTION_TABLE_H_
#define CARDVAULT_SERVER_NET_CONNECTION_TABLE_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/util/token_bucket.h"

namespace cardvault::net {

// An open socket as the table knows it: the descriptor number and the inode
// behind it, so a number reused for another file is never mistaken for it.
struct Connection {
  int fd = -1;
  uint64_t inode = 0;
  bool operator==(const Connection& o) const {
    return fd == o.fd && inode == o.inode;
  }
};

class ConnectionTable {
 public:
  struct Options {
    // Most connections open at once. Default 1024.
    size_t max_connections = 1024;
    // Most connections open from one source address. Default 256.
    size_t max_per_source = 256;
    // Most connections younger than the handshake deadline. Default 512.
    size_t max_pending = 512;
    // How long a connection may take to complete TLS and send its HTTP/2
    // preface (gRPC's GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS). Default 5 s.
    absl::Duration handshake_deadline = absl::Seconds(5);
    // New connections one source may open per second. Default 200.
    double max_new_per_second = 200;
  };

  enum class Refusal { kNone, kTotal, kPerSource, kPending, kRate };

  struct Decision {
    bool admitted = false;
    Refusal refusal = Refusal::kNone;
    // A pending connection the newcomer replaces: already out of the table;
    // the caller shuts it down.
    std::optional<Connection> evicted;
  };

  explicit ConnectionTable(Options options) : options_(options) {}

  // Admits `connection` from `source` (an address, no port) at `now`, or
  // refuses it. An admitted connection is in the table until Remove or
  // Sweep finds it closed. A table entry with the same descriptor number is
  // replaced: the number was free again, so that connection has closed.
  Decision Admit(absl::string_view source, Connection connection,
                 absl::Time now);

  // `connection` has carried a call: no longer pending, never evicted.
  void MarkServed(const Connection& connection);

  // Forgets a connection that has closed.
  void Remove(int fd);

  // Forgets every connection for which `still_open` is false, and the
  // new-connection rates of sources that have not connected for a while.
  void Sweep(const std::function<bool(const Connection&)>& still_open,
             absl::Time now);

  size_t open() const { return connections_.size(); }
  // Connections younger than the handshake deadline at `now`.
  size_t pending(absl::Time now);
  size_t sources() const { return sources_.size(); }
  // Sources whose new-connection rate is remembered.
  size_t rated_sources() const { return rates_.size(); }
  const Options& options() const { return options_; }

 private:
  struct Entry {
    std::string source;
    uint64_t inode = 0;
    absl::Time admitted;
    bool pending = true;
  };
  struct Source {
    size_t open = 0;
    size_t pending = 0;
    // Descriptors admitted while pending, oldest first; entries no longer
    // pending (or gone) are skipped when met.
    std::deque<std::pair<int, uint64_t>> pending_order;
  };

  // Ages out pending connections older than the deadline.
  void Expire(absl::Time now);
  void EndPending(const std::string& source, Source& s);
  void Erase(int fd);
  std::optional<Connection> Evict(absl::string_view newcomer_source);

  const Options options_;
  absl::flat_hash_map<int, Entry> connections_;
  absl::flat_hash_map<std::string, Source> sources_;
  // (pending count, source): the source with the most pending last.
  std::set<std::pair<size_t, std::string>> by_pending_;
  // Every admission while pending, oldest first (for expiry).
  std::deque<std::pair<int, uint64_t>> admission_order_;
  size_t pending_ = 0;
  // New-connection rate per source; dropped once full again, and the fullest
  // half when there are more than max_connections.
  absl::flat_hash_map<std::string, util::TokenBucket> rates_;
};

// What one client connection costs the server, resident: an idle
// mutual-TLS connection measured 88 KiB with gRPC 1.51 and OpenSSL 3.0
// (TLS buffers, which gRPC's ResourceQuota does not count, are most of it);
// one still in its handshake 16 KiB (docs/benchmarks.md).
inline constexpr uint64_t kConnectionCostBytes = 96 << 10;

// The admission limits for `descriptors` available to connections and
// `memory_bytes` they may hold: each limit given (non-zero) is kept, the
// others derive (documented with ListenerConfig); max_connections at most
// memory_bytes / kConnectionCostBytes. INVALID_ARGUMENT when a given limit
// is over the descriptor budget, or a per-source or pending limit over the
// total.
absl::StatusOr<ConnectionTable::Options> AdmissionLimits(
    uint64_t descriptors, uint64_t memory_bytes, uint64_t max_connections,
    uint64_t max_per_source, uint64_t max_pending, uint64_t max_new_per_second,
    absl::Duration handshake_deadline);

}  // namespace cardvault::net

#endif  // CARDVAULT_SERVER_NET_CONNECTION_TABLE_H_
