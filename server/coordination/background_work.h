// The vault's background work (re-encryption passes, audit retention
// purges, the TTL sweep of the PostgreSQL store), run only while this node
// holds the background lease (job_lease.h): with several nodes on one
// store, one node at a time does it, and another resumes it within the
// lease's ttl when that node dies.
//
// Each job runs on its own thread at its interval, and at once when this
// node takes the lease over (work the dead holder left is resumed, not
// waited for). A run is given the lease's fence, which it adds as a
// condition to each of its writes, so that a run that outlives the lease
// (a paused process) writes nothing after another node took over.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_COORDINATION_BACKGROUND_WORK_H_
#define CARDVAULT_SERVER_COORDINATION_BACKGROUND_WORK_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/coordination/job_lease.h"
#include "server/storage/transaction.h"

namespace cardvault::coordination {

struct BackgroundJob {
  // For logs and metrics (e.g. "audit-purge").
  std::string name;
  // Time between the starts of two runs on the holding node; positive.
  absl::Duration interval;
  // One run; `fence` must be a condition of every write it makes.
  std::function<absl::Status(const storage::Condition& fence)> run;
  // Ends a run in progress soon (the work stops); optional.
  std::function<void()> cancel;
};

class BackgroundWork {
 public:
  struct Options {
    // How often a node checks whether it holds the lease before running a
    // due job. Default 1 s.
    absl::Duration poll = absl::Seconds(1);
  };

  // Starts one thread per job. `lease` must outlive the work.
  static absl::StatusOr<std::unique_ptr<BackgroundWork>> Start(
      const JobLease* lease, std::vector<BackgroundJob> jobs, Options options);
  // Stops the threads, cancelling and waiting for runs in progress.
  ~BackgroundWork();

  BackgroundWork(const BackgroundWork&) = delete;
  BackgroundWork& operator=(const BackgroundWork&) = delete;

  // Runs of job `index` (in Start's order) finished on this node, and how
  // many of them failed.
  uint64_t runs(size_t index) const { return slots_[index]->runs.load(); }
  uint64_t failures(size_t index) const {
    return slots_[index]->failures.load();
  }
  // Times job `index`'s thread asked the lease whether it may run: about
  // one per poll while another node holds it.
  uint64_t lease_checks(size_t index) const {
    return slots_[index]->lease_checks.load();
  }

 private:
  struct Slot {
    BackgroundJob job;
    std::atomic<uint64_t> runs{0};
    std::atomic<uint64_t> failures{0};
    std::atomic<uint64_t> lease_checks{0};
    std::thread thread;
  };
  BackgroundWork(const JobLease* lease, Options options)
      : lease_(lease), options_(options) {}
  void Loop(Slot* slot);
  // How long the loop sleeps after a check, given when the job is due.
  absl::Duration WaitBeforeNextCheck(absl::Time next) const;

  const JobLease* const lease_;
  const Options options_;
  std::vector<std::unique_ptr<Slot>> slots_;
  absl::Notification stop_;
};

}  // namespace cardvault::coordination

#endif  // CARDVAULT_SERVER_COORDINATION_BACKGROUND_WORK_H_
