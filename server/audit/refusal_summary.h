// Bounds what refused calls add to the audit trail.
//
// Each caller (its identity as recorded, and its certificate's SHA-256) has
// a token bucket of `per_minute` records, refilled continuously, as large as
// one minute's worth. A refused call that finds a token is recorded as any
// call; one that finds none is counted instead, and every `interval` the
// counts of each caller become one REFUSALS_SUMMARY record: the caller,
// `refused_calls`, the first refusal's time, and in `detail` the last one's
// and the calls by RPC and status code. So one caller adds at most
// per_minute records per minute plus one summary per interval, whatever it
// sends. At most `max_callers` callers are tracked; beyond, refusals of new
// callers are counted under one "<other callers>" summary.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_AUDIT_REFUSAL_SUMMARY_H_
#define CARDVAULT_SERVER_AUDIT_REFUSAL_SUMMARY_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cardvault/v1/audit.pb.h"
#include "server/util/token_bucket.h"

namespace cardvault::audit {

// True for an event of a call the server refused before it touched any card
// data: its refusals may be summarised.
bool IsSummarisableRefusal(const ::cardvault::v1::AuditEvent& event);

class RefusalSummary {
 public:
  struct Options {
    // Refusals recorded one by one per caller and minute (and burst);
    // 0 = record every refusal.
    uint32_t per_minute = 60;
    // How often counted refusals become summary records.
    absl::Duration interval = absl::Minutes(1);
    size_t max_callers = 10000;
  };

  explicit RefusalSummary(Options options) : options_(options) {}

  // Whether `event` (IsSummarisableRefusal) at `now` is to be recorded; if
  // not, it has been counted for the caller's next summary.
  bool Admit(const ::cardvault::v1::AuditEvent& event, absl::Time now);

  // The summaries of every caller with counted refusals, which are cleared;
  // callers whose bucket is full again are forgotten.
  std::vector<::cardvault::v1::AuditEvent> Take(absl::Time now);

  // Summaries from Take that could not be written, counted again.
  void PutBack(std::vector<::cardvault::v1::AuditEvent> summaries);

  const Options& options() const { return options_; }

 private:
  struct Caller {
    util::TokenBucket bucket;
    uint64_t counted = 0;
    absl::Time first;
    absl::Time last;
    ::cardvault::v1::AuditEvent who;  // identity, certificate, peer
    std::map<std::string, uint64_t> by_rpc_and_code;
  };
  double PerSecond() const { return options_.per_minute / 60.0; }
  void Count(Caller& c, const ::cardvault::v1::AuditEvent& event,
             absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Caller> callers_ ABSL_GUARDED_BY(mu_);
  Caller others_ ABSL_GUARDED_BY(mu_);
};

}  // namespace cardvault::audit

#endif  // CARDVAULT_SERVER_AUDIT_REFUSAL_SUMMARY_H_
