#include "server/storage/transaction.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace cardvault::storage {

absl::StatusOr<int> ConditionEvaluator::FirstFailed(
    const Transaction& t) const {
  for (size_t i = 0; i < t.conditions.size(); ++i) {
    const Condition& c = t.conditions[i];
    std::optional<std::string> now;
    if (auto it = position_.find(std::pair(c.table, c.key));
        it != position_.end()) {
      now = final_[it->second].second;
    } else {
      absl::StatusOr<std::optional<std::string>> stored = read_(c.table, c.key);
      if (!stored.ok()) return stored.status();
      now = *std::move(stored);
    }
    if (now != c.expected) return static_cast<int>(i);
  }
  return -1;
}

void ConditionEvaluator::Apply(const Transaction& t) {
  for (const RecordWrite& w : t.writes) {
    auto key = std::pair(w.table, w.key);
    if (auto it = position_.find(key); it != position_.end()) {
      final_[it->second].second = w.value;
      continue;
    }
    position_.emplace(key, final_.size());
    final_.emplace_back(std::move(key), w.value);
  }
  for (const auto& [id, n] : t.counter_adds) {
    if (auto it = counter_position_.find(id); it != counter_position_.end()) {
      counters_[it->second].second += n;
      continue;
    }
    counter_position_.emplace(id, counters_.size());
    counters_.emplace_back(id, n);
  }
}

std::vector<std::pair<std::string, uint64_t>> ConditionEvaluator::CounterAdds()
    const {
  return counters_;
}

absl::StatusOr<ChainAppend> ConditionEvaluator::Describe(
    absl::Span<const Transaction> group, const ChainHead& head,
    GroupDescriber& describer) {
  Reset();
  describer.Begin(head);
  for (size_t i = 0; i < group.size(); ++i) {
    absl::StatusOr<int> failed = FirstFailed(group[i]);
    if (!failed.ok()) return failed.status();
    if (describer.Admit(i, *failed) && *failed < 0) Apply(group[i]);
  }
  ChainAppend append = describer.Finish();
  if (!append.records.empty() &&
      append.records.front().first <= head.sequence) {
    return absl::InternalError("audit records do not follow the chain head");
  }
  if (append.records.empty()) {
    const bool shared_only = std::all_of(
        final_.begin(), final_.end(),
        [](const auto& w) { return w.first.first == Table::kShared; });
    if (!shared_only || !counters_.empty() || append.purge_through > 0 ||
        append.anchor.has_value()) {
      return absl::InternalError("a write to token data without its record");
    }
  }
  return append;
}

namespace {

// Admits the one transaction of CommitUnaudited and describes nothing.
class Unaudited final : public GroupDescriber {
 public:
  void Begin(const ChainHead&) override { failed_ = -1; }
  bool Admit(size_t, int failed_condition) override {
    failed_ = failed_condition;
    return failed_condition < 0;
  }
  ChainAppend Finish() override { return {}; }
  int failed() const { return failed_; }

 private:
  int failed_ = -1;
};

}  // namespace

absl::Status CommitUnaudited(const TransactionalStore& store,
                             const Transaction& t) {
  for (const RecordWrite& w : t.writes) {
    if (w.table != Table::kShared) {
      return absl::InvalidArgumentError(
          "only coordination state is written without an audit record");
    }
  }
  if (!t.counter_adds.empty()) {
    return absl::InvalidArgumentError(
        "a counter is never added to without an audit record");
  }
  Unaudited describer;
  absl::Status s = store.CommitGroup(absl::MakeConstSpan(&t, 1), describer);
  if (!s.ok()) return s;
  if (describer.failed() >= 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "condition ", describer.failed(), " of the transaction does not hold"));
  }
  return absl::OkStatus();
}

void ConditionEvaluator::Reset() {
  final_.clear();
  position_.clear();
  counters_.clear();
  counter_position_.clear();
}

}  // namespace cardvault::storage
