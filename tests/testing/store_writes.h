// Writes to a store for tests of storage itself: group commits whose audit
// records are placeholders ("audit-<sequence>"), one per admitted
// transaction.
#ifndef CARDVAULT_TESTS_TESTING_STORE_WRITES_H_
#define CARDVAULT_TESTS_TESTING_STORE_WRITES_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/storage/transaction.h"

namespace cardvault::testing {

// Admits every transaction whose conditions hold (or those `admit` picks)
// and records which failed.
class PlaceholderRecords : public storage::GroupDescriber {
 public:
  explicit PlaceholderRecords(std::function<bool(size_t)> admit =
                                  [](size_t) { return true; })
      : admit_(std::move(admit)) {}

  void Begin(const storage::ChainHead& head) override {
    ++begins_;
    head_ = head;
    next_ = head.sequence + 1;
    append_ = {};
    failed_.clear();
    admitted_.clear();
  }
  bool Admit(size_t index, int failed_condition) override {
    failed_.push_back(failed_condition);
    if (failed_condition >= 0 || !admit_(index)) return false;
    admitted_.push_back(index);
    append_.records.emplace_back(next_, absl::StrCat("audit-", next_));
    ++next_;
    return true;
  }
  storage::ChainAppend Finish() override {
    append_.head_mac = std::string(32, static_cast<char>('a' + next_ % 26));
    append_.purge_through = purge_through;
    append_.anchor = anchor;
    return append_;
  }

  // Outputs of the last attempt.
  const std::vector<int>& failed() const { return failed_; }
  const std::vector<size_t>& admitted() const { return admitted_; }
  const storage::ChainHead& head() const { return head_; }
  int begins() const { return begins_; }

  uint64_t purge_through = 0;
  std::optional<std::string> anchor;

 private:
  std::function<bool(size_t)> admit_;
  storage::ChainHead head_;
  uint64_t next_ = 1;
  storage::ChainAppend append_;
  std::vector<int> failed_;
  std::vector<size_t> admitted_;
  int begins_ = 0;
};

// Commits `t` alone; `*failed` is its first failed condition (-1: none).
inline absl::Status CommitOne(const storage::TransactionalStore& store,
                              storage::Transaction t, int* failed = nullptr) {
  PlaceholderRecords records;
  std::vector<storage::Transaction> group;
  group.push_back(std::move(t));
  absl::Status s = store.CommitGroup(group, records);
  if (failed != nullptr) {
    *failed = records.failed().empty() ? -1 : records.failed()[0];
  }
  return s;
}

// A transaction that puts `value` under `key` of `table`, unconditionally.
inline storage::Transaction Put(storage::Table table, std::string key,
                                std::string value) {
  storage::Transaction t;
  t.writes.push_back({table, std::move(key), std::move(value)});
  return t;
}

}  // namespace cardvault::testing

#endif  // CARDVAULT_TESTS_TESTING_STORE_WRITES_H_
