// A closed-loop load generator over gRPC's callback API: `in_flight` calls
// are always outstanding, spread over the channels; each completion records
// its latency and starts the next call, until the run ends. Calls are
// generic (method path and serialized request), so one loop drives every
// RPC, grpc.health.v1 included.
//
// Thread safety: Run may be called from one thread at a time.
#ifndef CARDVAULT_CLIENT_LOAD_GENERATOR_H_
#define CARDVAULT_CLIENT_LOAD_GENERATOR_H_

#include <grpcpp/channel.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace cardvault::client {

// One kind of call in the mix.
struct LoadOp {
  std::string name;    // "tokenize"
  std::string method;  // "/cardvault.v1.TokenVault/Tokenize"
  // Serialized requests, used round-robin.
  std::vector<std::string> requests;
  // Items a call carries (batch size; 1 otherwise).
  int items_per_call = 1;
  // Relative share of calls.
  int weight = 1;
  // Channels this op may use (its caller identity); round-robin per slot.
  std::vector<std::shared_ptr<grpc::Channel>> channels;
};

struct OpResult {
  std::string name;
  uint64_t calls = 0;  // completed OK in the measured window
  uint64_t items = 0;  // calls * items_per_call
  std::map<std::string, uint64_t> errors;  // by status code name
  double calls_per_second = 0;
  double items_per_second = 0;
  // Latency percentiles of OK calls, microseconds.
  double p50_us = 0, p90_us = 0, p99_us = 0, p999_us = 0;
};

struct LoadOptions {
  int in_flight = 64;
  absl::Duration warmup = absl::Seconds(2);
  absl::Duration duration = absl::Seconds(10);
  absl::Duration deadline = absl::Seconds(10);  // per call
  uint64_t seed = 1;
};

// Runs the mix; one result per op, in the order given.
absl::StatusOr<std::vector<OpResult>> RunLoad(const std::vector<LoadOp>& ops,
                                              const LoadOptions& options);

}  // namespace cardvault::client

#endif  // CARDVAULT_CLIENT_LOAD_GENERATOR_H_
