#include "server/util/blocking_executor.h"

#include <utility>

namespace cardvault::util {

absl::StatusOr<std::unique_ptr<BlockingExecutor>> BlockingExecutor::Create(
    Options options) {
  if (options.threads == 0 || options.max_queued == 0) {
    return absl::InvalidArgumentError("executor needs threads and a queue");
  }
  std::unique_ptr<BlockingExecutor> executor(new BlockingExecutor(options));
  for (size_t i = 0; i < options.threads; ++i) {
    executor->threads_.emplace_back([raw = executor.get()] { raw->Loop(); });
  }
  return executor;
}

BlockingExecutor::~BlockingExecutor() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

bool BlockingExecutor::Schedule(absl::AnyInvocable<void()> work) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || queue_.size() >= options_.max_queued) return false;
  queue_.push_back(std::move(work));
  return true;
}

void BlockingExecutor::Loop() {
  while (true) {
    absl::AnyInvocable<void()> work;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](BlockingExecutor* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
            return !self->queue_.empty() || self->stopping_;
          },
          this));
      if (queue_.empty()) return;  // stopping, nothing left
      work = std::move(queue_.front());
      queue_.pop_front();
    }
    work();
  }
}

}  // namespace cardvault::util
