// A storage decorator that fails on command: forwards to a real store and,
// while failing, answers UNAVAILABLE as a full disk or dead volume would.
#ifndef CARDVAULT_TESTS_TESTING_FAULT_INJECTING_STORE_H_
#define CARDVAULT_TESTS_TESTING_FAULT_INJECTING_STORE_H_

#include <atomic>

#include "server/storage/token_store.h"
#include "server/storage/transaction.h"

namespace cardvault::testing {

class FaultInjectingStore : public storage::RecordStore,
                            public storage::AuditStore,
                            public storage::TransactionalStore {
 public:
  // `store` must outlive this one.
  template <typename Store>
  explicit FaultInjectingStore(const Store* store)
      : records_(store), audit_(store), writer_(store) {}

  // While set, commits fail (reads keep working).
  void FailCommits(bool fail) { fail_commits_ = fail; }
  int failed_commits() const { return failed_commits_.load(); }
  int commits() const { return commits_.load(); }

  absl::StatusOr<std::string> Get(storage::Table table,
                                  absl::string_view key) const override {
    return records_->Get(table, key);
  }
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Scan(
      storage::Table table, absl::string_view start_after,
      size_t limit) const override {
    return records_->Scan(table, start_after, limit);
  }
  absl::Status CommitGroup(absl::Span<const storage::Transaction> group,
                           storage::GroupDescriber& describer) const override {
    if (fail_commits_) {
      ++failed_commits_;
      return absl::UnavailableError("injected: storage write failed");
    }
    ++commits_;
    return writer_->CommitGroup(group, describer);
  }
  absl::StatusOr<storage::ChainHead> ChainHeadNow() const override {
    return writer_->ChainHeadNow();
  }
  absl::StatusOr<std::optional<std::pair<uint64_t, std::string>>>
  LastAuditRecord() const override {
    return audit_->LastAuditRecord();
  }
  absl::StatusOr<std::optional<std::string>> AuditAnchor() const override {
    return audit_->AuditAnchor();
  }
  absl::Status ScanAudit(uint64_t from,
                         const std::function<bool(uint64_t, absl::string_view)>&
                             visit) const override {
    return audit_->ScanAudit(from, visit);
  }

 private:
  const storage::RecordStore* const records_;
  const storage::AuditStore* const audit_;
  const storage::TransactionalStore* const writer_;
  std::atomic<bool> fail_commits_{false};
  mutable std::atomic<int> failed_commits_{0};
  mutable std::atomic<int> commits_{0};
};

}  // namespace cardvault::testing

#endif  // CARDVAULT_TESTS_TESTING_FAULT_INJECTING_STORE_H_
