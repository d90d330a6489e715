// Finishes server reactors from threads that are not gRPC's (the audit
// log's completion thread), many calls per hop onto a gRPC thread. A call
// finished from a foreign thread costs gRPC a write of its own (a TLS
// record and a sendmsg); calls finished together on one gRPC thread share
// one write per connection.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_SERVICE_BATCHED_FINISHER_H_
#define CARDVAULT_SERVER_SERVICE_BATCHED_FINISHER_H_

#include <grpcpp/alarm.h>
#include <grpcpp/support/server_callback.h>

#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace cardvault::service {

class BatchedFinisher {
 public:
  BatchedFinisher() = default;
  BatchedFinisher(const BatchedFinisher&) = delete;
  BatchedFinisher& operator=(const BatchedFinisher&) = delete;
  // Waits until every call handed over is finished.
  ~BatchedFinisher();

  // Finishes `reactor` with `status` soon, on a gRPC thread, together with
  // whatever else is waiting then.
  void Finish(grpc::ServerUnaryReactor* reactor, grpc::Status status);

 private:
  using Call = std::pair<grpc::ServerUnaryReactor*, grpc::Status>;
  // Runs on a gRPC thread: finishes every waiting call.
  void FinishWaiting();

  absl::Mutex mu_;
  std::vector<Call> waiting_ ABSL_GUARDED_BY(mu_);
  // An alarm is set and has not yet taken the waiting calls.
  bool scheduled_ ABSL_GUARDED_BY(mu_) = false;
  // A fired alarm is not set again: each hop gets its own.
  std::unique_ptr<grpc::Alarm> alarm_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_BATCHED_FINISHER_H_
