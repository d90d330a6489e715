#include "server/vault/velocity_reservations.h"

#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "server/auth/access_policy.h"
#include "server/coordination/use_reservations.h"

namespace cardvault::vault {

std::string VelocityReservationCounter(const crypto::HmacSha256& index_key,
                                       int64_t day,
                                       absl::string_view identity) {
  const std::string length(1, static_cast<char>(identity.size()));
  const std::string mac =
      index_key.ComputeSecret({"cardvault/velocity", length, identity});
  return auth::DayCounterId(
      day, absl::BytesToHexString(mac.substr(0, kVelocityDigestBytes)));
}

absl::StatusOr<uint64_t> PurgeVelocityReservations(
    const storage::RecordStore& records,
    const storage::TransactionalStore& writer, absl::Time now,
    const storage::Condition& fence, size_t batch) {
  if (batch == 0) return absl::InvalidArgumentError("purge batch of 0");
  const std::string prefix =
      coordination::ReservationKey(auth::kDayCounterPrefix);
  const int64_t yesterday = absl::ToUnixSeconds(now) / 86400 - 1;
  uint64_t deleted = 0;
  std::string cursor = prefix;
  for (bool more = true; more;) {
    absl::StatusOr<std::vector<std::pair<std::string, std::string>>> rows =
        records.Scan(storage::Table::kShared, cursor, batch);
    if (!rows.ok()) return rows.status();
    more = rows->size() == batch;
    storage::Transaction t;
    t.conditions.push_back(fence);
    for (auto& [key, value] : *rows) {
      if (!absl::StartsWith(key, prefix)) {
        more = false;
        break;
      }
      cursor = key;
      // "uses/velocity/<day>/<digest>"; a row of another form is kept.
      const absl::string_view rest =
          absl::string_view(key).substr(prefix.size());
      const size_t slash = rest.find('/');
      int64_t day = 0;
      if (slash == absl::string_view::npos ||
          !absl::SimpleAtoi(rest.substr(0, slash), &day) || day >= yesterday) {
        continue;
      }
      t.conditions.push_back({storage::Table::kShared, key, std::move(value)});
      t.writes.push_back({storage::Table::kShared, key, std::nullopt});
    }
    if (t.writes.empty()) continue;
    if (absl::Status s = storage::CommitUnaudited(writer, t); !s.ok()) {
      return s;
    }
    deleted += t.writes.size();
  }
  return deleted;
}

}  // namespace cardvault::vault
