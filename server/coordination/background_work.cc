#include "server/coordination/background_work.h"

#include <pthread.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/util/log.h"

namespace cardvault::coordination {

absl::StatusOr<std::unique_ptr<BackgroundWork>> BackgroundWork::Start(
    const JobLease* lease, std::vector<BackgroundJob> jobs, Options options) {
  if (lease == nullptr || options.poll <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("background work needs a lease");
  }
  for (const BackgroundJob& job : jobs) {
    if (job.name.empty() || job.interval <= absl::ZeroDuration() || !job.run) {
      return absl::InvalidArgumentError(
          "a background job needs a name, an interval and a run");
    }
  }
  auto work =
      std::unique_ptr<BackgroundWork>(new BackgroundWork(lease, options));
  for (BackgroundJob& job : jobs) {
    auto slot = std::make_unique<Slot>();
    slot->job = std::move(job);
    work->slots_.push_back(std::move(slot));
  }
  for (const std::unique_ptr<Slot>& slot : work->slots_) {
    slot->thread =
        std::thread([w = work.get(), s = slot.get()] { w->Loop(s); });
  }
  return work;
}

BackgroundWork::~BackgroundWork() {
  stop_.Notify();
  for (const std::unique_ptr<Slot>& slot : slots_) {
    if (slot->job.cancel) slot->job.cancel();
  }
  for (const std::unique_ptr<Slot>& slot : slots_) {
    if (slot->thread.joinable()) slot->thread.join();
  }
}

void BackgroundWork::Loop(Slot* slot) {
  const std::string thread_name = slot->job.name.substr(0, 15);
  pthread_setname_np(pthread_self(), thread_name.c_str());
  absl::Time next = absl::InfinitePast();
  do {
    if (absl::Now() < next) continue;
    ++slot->lease_checks;
    std::optional<storage::Condition> fence = lease_->Fence();
    if (!fence.has_value()) continue;
    const absl::Status s = slot->job.run(*fence);
    ++slot->runs;
    if (!s.ok()) {
      ++slot->failures;
      util::LogError(absl::StrCat("background job ", slot->job.name,
                                  " failed: ", s.ToString()));
    }
    next = absl::Now() + slot->job.interval;
  } while (!stop_.WaitForNotificationWithTimeout(WaitBeforeNextCheck(next)));
}

absl::Duration BackgroundWork::WaitBeforeNextCheck(absl::Time next) const {
  // A job not yet due waits for it (checking the lease each poll); one due,
  // but not run because another node holds the lease, waits a whole poll.
  const absl::Duration until_due = next - absl::Now();
  if (until_due <= absl::ZeroDuration()) return options_.poll;
  return std::max(absl::Milliseconds(1), std::min(options_.poll, until_due));
}

}  // namespace cardvault::coordination
