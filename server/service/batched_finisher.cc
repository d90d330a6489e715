#include "server/service/batched_finisher.h"

#include <grpc/support/time.h>

namespace cardvault::service {

BatchedFinisher::~BatchedFinisher() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](BatchedFinisher* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
        return !self->scheduled_ && self->running_ == 0;
      },
      this));
}

void BatchedFinisher::Finish(grpc::ServerUnaryReactor* reactor,
                             grpc::Status status) {
  absl::MutexLock lock(&mu_);
  waiting_.emplace_back(reactor, std::move(status));
  if (scheduled_) return;
  scheduled_ = true;
  // An alarm already due: gRPC hands its callback to one of its own
  // threads at once. (A deadline of "now" is rounded up to the next
  // millisecond and waits for the timer thread: +2 ms per call.)
  alarm_ = std::make_unique<grpc::Alarm>();
  alarm_->Set(gpr_inf_past(GPR_CLOCK_MONOTONIC),
              [this](bool) { FinishWaiting(); });
}

void BatchedFinisher::FinishWaiting() {
  std::vector<Call> calls;
  {
    absl::MutexLock lock(&mu_);
    calls.swap(waiting_);
    scheduled_ = false;
    ++running_;
  }
  for (Call& call : calls) call.first->Finish(std::move(call.second));
  absl::MutexLock lock(&mu_);
  --running_;
}

}  // namespace cardvault::service
