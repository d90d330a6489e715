#include "server/net/connection_table.h"

#include <algorithm>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace cardvault::net {
namespace {

// Pops the front of `order` while it names no pending entry of `table`.
template <typename Table>
void PopStale(std::deque<std::pair<int, uint64_t>>& order, const Table& table) {
  while (!order.empty()) {
    auto it = table.find(order.front().first);
    if (it != table.end() && it->second.inode == order.front().second &&
        it->second.pending) {
      return;
    }
    order.pop_front();
  }
}

}  // namespace

void ConnectionTable::EndPending(const std::string& source, Source& s) {
  by_pending_.erase({s.pending, source});
  --s.pending;
  --pending_;
  if (s.pending > 0) {
    by_pending_.insert({s.pending, source});
  } else {
    s.pending_order.clear();
  }
}

void ConnectionTable::MarkServed(const Connection& connection) {
  auto it = connections_.find(connection.fd);
  if (it == connections_.end() || it->second.inode != connection.inode ||
      !it->second.pending) {
    return;
  }
  it->second.pending = false;
  EndPending(it->second.source, sources_[it->second.source]);
}

void ConnectionTable::Erase(int fd) {
  auto it = connections_.find(fd);
  if (it == connections_.end()) return;
  const std::string source = it->second.source;
  Source& s = sources_[source];
  if (it->second.pending) {
    it->second.pending = false;
    EndPending(source, s);
  }
  connections_.erase(it);
  if (--s.open == 0) sources_.erase(source);
}

void ConnectionTable::Expire(absl::Time now) {
  while (!admission_order_.empty()) {
    const auto [fd, inode] = admission_order_.front();
    auto it = connections_.find(fd);
    if (it != connections_.end() && it->second.inode == inode &&
        it->second.pending) {
      if (now - it->second.admitted < options_.handshake_deadline) return;
      it->second.pending = false;
      Source& s = sources_[it->second.source];
      EndPending(it->second.source, s);
      PopStale(s.pending_order, connections_);
    }
    admission_order_.pop_front();
  }
}

std::optional<Connection> ConnectionTable::Evict(
    absl::string_view newcomer_source) {
  if (by_pending_.empty()) return std::nullopt;
  // A copy: Erase below changes the set.
  const auto [most, source] = *by_pending_.rbegin();
  auto newcomer = sources_.find(newcomer_source);
  const size_t newcomer_pending =
      newcomer == sources_.end() ? 0 : newcomer->second.pending;
  // One fewer there and one more for the newcomer must not merely swap
  // their places, or two sources would take turns evicting each other.
  if (most <= newcomer_pending + 1) return std::nullopt;
  Source& s = sources_[source];
  PopStale(s.pending_order, connections_);
  if (s.pending_order.empty()) return std::nullopt;  // Unreachable.
  const Connection victim{s.pending_order.front().first,
                          s.pending_order.front().second};
  s.pending_order.pop_front();
  Erase(victim.fd);
  return victim;
}

ConnectionTable::Decision ConnectionTable::Admit(absl::string_view source,
                                                 Connection connection,
                                                 absl::Time now) {
  Expire(now);
  Erase(connection.fd);
  Decision decision;
  const double rate = options_.max_new_per_second;
  if (rate > 0 && !rates_[source].TryTake(now, rate, 2 * rate)) {
    decision.refusal = Refusal::kRate;
    return decision;
  }
  auto existing = sources_.find(source);
  if (existing != sources_.end() &&
      existing->second.open >= options_.max_per_source) {
    decision.refusal = Refusal::kPerSource;
    return decision;
  }
  const Refusal full = connections_.size() >= options_.max_connections
                           ? Refusal::kTotal
                       : pending_ >= options_.max_pending ? Refusal::kPending
                                                          : Refusal::kNone;
  if (full != Refusal::kNone) {
    decision.evicted = Evict(source);
    if (!decision.evicted.has_value()) {
      decision.refusal = full;
      return decision;
    }
  }
  std::string key(source);
  connections_[connection.fd] =
      Entry{.source = key, .inode = connection.inode, .admitted = now};
  Source& s = sources_[key];
  ++s.open;
  if (s.pending > 0) by_pending_.erase({s.pending, key});
  ++s.pending;
  ++pending_;
  by_pending_.insert({s.pending, key});
  s.pending_order.emplace_back(connection.fd, connection.inode);
  admission_order_.emplace_back(connection.fd, connection.inode);
  decision.admitted = true;
  return decision;
}

void ConnectionTable::Remove(int fd) { Erase(fd); }

void ConnectionTable::Sweep(
    const std::function<bool(const Connection&)>& still_open, absl::Time now) {
  std::vector<int> closed;
  for (const auto& [fd, entry] : connections_) {
    if (!still_open(Connection{fd, entry.inode})) closed.push_back(fd);
  }
  for (int fd : closed) Erase(fd);
  const double rate = options_.max_new_per_second;
  absl::erase_if(rates_, [&](const auto& entry) {
    return entry.second.FullAt(now, rate, 2 * rate);
  });
  // Still too many: forget the fullest half, so a flood from many
  // addresses never gives back the burst of one that has been using it.
  if (rates_.size() > options_.max_connections) {
    std::vector<double> tokens;
    tokens.reserve(rates_.size());
    for (const auto& [source, bucket] : rates_) {
      tokens.push_back(bucket.TokensAt(now, rate, 2 * rate));
    }
    auto middle = tokens.begin() + tokens.size() / 2;
    std::nth_element(tokens.begin(), middle, tokens.end());
    const double median = *middle;
    absl::erase_if(rates_, [&](const auto& entry) {
      return entry.second.TokensAt(now, rate, 2 * rate) >= median;
    });
  }
}

size_t ConnectionTable::pending(absl::Time now) {
  Expire(now);
  return pending_;
}

absl::StatusOr<ConnectionTable::Options> AdmissionLimits(
    uint64_t descriptors, uint64_t memory_bytes, uint64_t max_connections,
    uint64_t max_per_source, uint64_t max_pending, uint64_t max_new_per_second,
    absl::Duration handshake_deadline) {
  if (max_connections > descriptors) {
    return absl::InvalidArgumentError(absl::StrCat(
        "listener.max_connections ", max_connections, " is over the ",
        descriptors,
        " descriptors the budget leaves for connections (raise LimitNOFILE= "
        "or lower it)"));
  }
  ConnectionTable::Options o;
  o.max_connections =
      max_connections != 0
          ? max_connections
          : std::max<uint64_t>(
                16, std::min(descriptors, memory_bytes / kConnectionCostBytes));
  o.max_per_source = max_per_source != 0
                         ? max_per_source
                         : std::max<uint64_t>(8, o.max_connections / 4);
  o.max_pending = max_pending != 0
                      ? max_pending
                      : std::max<uint64_t>(16, o.max_connections / 2);
  if (o.max_per_source > o.max_connections ||
      o.max_pending > o.max_connections) {
    return absl::InvalidArgumentError(absl::StrCat(
        "listener.max_connections_per_source (", o.max_per_source,
        ") and listener.max_pending_handshakes (", o.max_pending,
        ") must not be over max_connections (", o.max_connections, ")"));
  }
  o.handshake_deadline = handshake_deadline;
  o.max_new_per_second = static_cast<double>(max_new_per_second);
  return o;
}

}  // namespace cardvault::net
