#include "client/load_generator.h"

#include <grpcpp/client_context.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace cardvault::client {
namespace {

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "OTHER";
  }
}

double Percentile(const std::vector<int64_t>& sorted_ns, double q) {
  if (sorted_ns.empty()) return 0;
  const size_t i =
      std::min(sorted_ns.size() - 1, static_cast<size_t>(q * sorted_ns.size()));
  return sorted_ns[i] / 1000.0;
}

// The shared state of one run. Calls hold a pointer to it; Run waits until
// every slot has stopped before it goes away.
class Runner {
 public:
  Runner(const std::vector<LoadOp>& ops, const LoadOptions& options)
      : ops_(ops), options_(options), per_op_(ops.size()) {
    for (const LoadOp& op : ops_) {
      stubs_.emplace_back();
      for (const auto& channel : op.channels) {
        stubs_.back().push_back(std::make_unique<grpc::GenericStub>(channel));
      }
    }
    for (size_t i = 0; i < ops_.size(); ++i) {
      for (int w = 0; w < ops_[i].weight; ++w) schedule_.push_back(i);
    }
  }

  std::vector<OpResult> Run() {
    const absl::Time start = absl::Now();
    measure_from_ = start + options_.warmup;
    end_ = measure_from_ + options_.duration;
    {
      absl::MutexLock lock(&mu_);
      running_ = options_.in_flight;
    }
    for (int slot = 0; slot < options_.in_flight; ++slot) {
      StartCall(slot, options_.seed * 7919 + slot);
    }
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](int* running) { return *running == 0; }, &running_));
    std::vector<OpResult> out;
    const double seconds = absl::ToDoubleSeconds(options_.duration);
    for (size_t i = 0; i < ops_.size(); ++i) {
      PerOp& p = per_op_[i];
      std::sort(p.latencies_ns.begin(), p.latencies_ns.end());
      OpResult r;
      r.name = ops_[i].name;
      r.calls = p.latencies_ns.size();
      r.items = r.calls * ops_[i].items_per_call;
      r.errors = p.errors;
      r.calls_per_second = r.calls / seconds;
      r.items_per_second = r.items / seconds;
      r.p50_us = Percentile(p.latencies_ns, 0.50);
      r.p90_us = Percentile(p.latencies_ns, 0.90);
      r.p99_us = Percentile(p.latencies_ns, 0.99);
      r.p999_us = Percentile(p.latencies_ns, 0.999);
      out.push_back(std::move(r));
    }
    return out;
  }

 private:
  struct Call {
    grpc::ClientContext context;
    grpc::ByteBuffer request;
    grpc::ByteBuffer response;
    absl::Time started;
    size_t op = 0;
    int slot = 0;
    uint64_t rng_state = 0;
  };
  struct PerOp {
    std::vector<int64_t> latencies_ns;
    std::map<std::string, uint64_t> errors;
  };

  void StartCall(int slot, uint64_t rng_state) {
    std::mt19937_64 rng(rng_state);
    auto* call = new Call;
    call->slot = slot;
    call->op = schedule_[rng() % schedule_.size()];
    call->rng_state = rng();
    const LoadOp& op = ops_[call->op];
    const std::string& bytes =
        op.requests[next_request_.fetch_add(1, std::memory_order_relaxed) %
                    op.requests.size()];
    grpc::Slice slice(bytes);
    call->request = grpc::ByteBuffer(&slice, 1);
    call->context.set_deadline(
        absl::ToChronoTime(absl::Now() + options_.deadline));
    grpc::GenericStub& stub = *stubs_[call->op][slot % stubs_[call->op].size()];
    call->started = absl::Now();
    stub.UnaryCall(&call->context, op.method, grpc::StubOptions(),
                   &call->request, &call->response,
                   [this, call](grpc::Status status) { Done(call, status); });
  }

  void Done(Call* call, const grpc::Status& status) {
    const absl::Time now = absl::Now();
    const int slot = call->slot;
    const uint64_t rng_state = call->rng_state;
    if (call->started >= measure_from_ && now <= end_) {
      absl::MutexLock lock(&mu_);
      PerOp& p = per_op_[call->op];
      if (status.ok()) {
        p.latencies_ns.push_back(absl::ToInt64Nanoseconds(now - call->started));
      } else {
        ++p.errors[CodeName(status.error_code())];
      }
    }
    delete call;
    if (now < end_) {
      StartCall(slot, rng_state);
      return;
    }
    absl::MutexLock lock(&mu_);
    --running_;
  }

  const std::vector<LoadOp>& ops_;
  const LoadOptions options_;
  std::vector<std::vector<std::unique_ptr<grpc::GenericStub>>> stubs_;
  std::vector<size_t> schedule_;  // op index repeated by weight
  std::atomic<uint64_t> next_request_{0};
  absl::Time measure_from_;
  absl::Time end_;
  absl::Mutex mu_;
  std::vector<PerOp> per_op_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

absl::StatusOr<std::vector<OpResult>> RunLoad(const std::vector<LoadOp>& ops,
                                              const LoadOptions& options) {
  if (ops.empty() || options.in_flight <= 0 ||
      options.duration <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("nothing to run");
  }
  for (const LoadOp& op : ops) {
    if (op.requests.empty() || op.channels.empty() || op.weight <= 0) {
      return absl::InvalidArgumentError("op " + op.name +
                                        " has no requests or channels");
    }
  }
  Runner runner(ops, options);
  return runner.Run();
}

}  // namespace cardvault::client
