// A fixed pool of threads for work that blocks (a durable write, an HSM
// call), so that gRPC's callback threads, which serve every connection,
// never wait on it. A full queue refuses new work instead of growing.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_UTIL_BLOCKING_EXECUTOR_H_
#define CARDVAULT_SERVER_UTIL_BLOCKING_EXECUTOR_H_

#include <cstddef>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace cardvault::util {

class BlockingExecutor {
 public:
  struct Options {
    // Threads running work. Calls blocked on the durable write all wait
    // together and are committed in one group, so more threads than cores
    // raise throughput. Default 64.
    size_t threads = 64;
    // Work waiting for a thread; beyond it Schedule refuses. Default 4096.
    size_t max_queued = 4096;
  };

  static absl::StatusOr<std::unique_ptr<BlockingExecutor>> Create(
      Options options);

  BlockingExecutor(const BlockingExecutor&) = delete;
  BlockingExecutor& operator=(const BlockingExecutor&) = delete;
  // Runs what is queued, then joins the threads.
  ~BlockingExecutor();

  // Queues `work`; false (and `work` not run) if the queue is full.
  bool Schedule(absl::AnyInvocable<void()> work);

 private:
  explicit BlockingExecutor(Options options) : options_(options) {}
  void Loop();

  const Options options_;
  absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace cardvault::util

#endif  // CARDVAULT_SERVER_UTIL_BLOCKING_EXECUTOR_H_
