// Reads the access policy file and keeps the policy in force up to date.
#ifndef CARDVAULT_SERVER_CONFIG_POLICY_LOADER_H_
#define CARDVAULT_SERVER_CONFIG_POLICY_LOADER_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/auth/access_policy.h"

namespace cardvault::config {

// Parses policy text (cardvault.config.v1.AccessPolicy, text format) named
// `source` in errors, and validates it. INVALID_ARGUMENT with file, line and
// column, or with the binding at fault.
absl::StatusOr<std::unique_ptr<auth::AccessPolicy>> ParsePolicy(
    absl::string_view text, absl::string_view source);

// Reads `path` and calls ParsePolicy.
absl::StatusOr<std::unique_ptr<auth::AccessPolicy>> LoadPolicyFile(
    const std::string& path);

// What one change of the policy file came to, for its audit record.
struct PolicyReload {
  absl::Status outcome;    // OK: applied; else why it was refused
  std::string sha256_hex;  // of the file's new content
  // ChangesFrom the policy in force (applied reloads only).
  std::string changes;
};

// Re-reads the policy file when its content changes and swaps it into a
// PolicyHolder. A file that fails to load leaves the old policy in force.
// Every change, applied or refused, is reported to `on_reload`.
//
// Thread safety: thread-safe; one background thread.
class PolicyFileWatcher {
 public:
  // `holder` must outlive the watcher. `initial_text` is the content already
  // loaded, so that only later changes count.
  PolicyFileWatcher(std::string path, std::string initial_text,
                    absl::Duration interval, auth::PolicyHolder* holder,
                    std::function<void(const PolicyReload&)> on_reload);
  PolicyFileWatcher(const PolicyFileWatcher&) = delete;
  PolicyFileWatcher& operator=(const PolicyFileWatcher&) = delete;
  ~PolicyFileWatcher();

  // Checks the file now (also called by the background thread).
  void CheckNow();

 private:
  const std::string path_;
  const absl::Duration interval_;
  auth::PolicyHolder* const holder_;
  const std::function<void(const PolicyReload&)> on_reload_;
  absl::Mutex mu_;
  std::string last_text_ ABSL_GUARDED_BY(mu_);
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace cardvault::config

#endif  // CARDVAULT_SERVER_CONFIG_POLICY_LOADER_H_
