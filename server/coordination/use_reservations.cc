#include "server/coordination/use_reservations.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/crypto/random.h"

namespace cardvault::coordination {
namespace {

struct Row {
  uint64_t total = 0;
  std::optional<std::string> bytes;  // nullopt: no row yet
};

uint64_t ReadUint64(absl::string_view b) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(b[i]);
  return v;
}

absl::StatusOr<Row> ReadRow(const storage::Store& store,
                            const std::string& key) {
  absl::StatusOr<std::string> v = store.Get(storage::Table::kShared, key);
  if (absl::IsNotFound(v.status())) return Row{};
  if (!v.ok()) return v.status();
  if (v->size() != kReservationBytes ||
      static_cast<uint8_t>((*v)[0]) != kReservationFormatV1) {
    return absl::DataLossError("use reservation row is malformed");
  }
  return Row{.total = ReadUint64(absl::string_view(*v).substr(1, 8)),
             .bytes = *std::move(v)};
}

}  // namespace

std::string ReservationKey(absl::string_view counter) {
  return absl::StrCat("uses/", counter);
}

absl::StatusOr<std::unique_ptr<UseReservations>> UseReservations::Create(
    const storage::Store* store, Options options) {
  if (store == nullptr || options.max_attempts < 1) {
    return absl::InvalidArgumentError("bad use reservation arguments");
  }
  return std::unique_ptr<UseReservations>(new UseReservations(store, options));
}

absl::StatusOr<uint64_t> UseReservations::Reserved(
    absl::string_view counter) const {
  absl::StatusOr<Row> row = ReadRow(*store_, ReservationKey(counter));
  if (!row.ok()) return row.status();
  return row->total;
}

absl::StatusOr<UseReservations::Grant> UseReservations::Reserve(
    absl::string_view counter, uint64_t minimum, uint64_t wanted,
    uint64_t limit) const {
  if (counter.empty() || counter.size() > kMaxCounterNameBytes ||
      minimum == 0 || minimum > wanted) {
    return absl::InvalidArgumentError("bad use reservation");
  }
  const std::string key = ReservationKey(counter);
  for (int attempt = 0; attempt < options_.max_attempts; ++attempt) {
    absl::StatusOr<Row> row = ReadRow(*store_, key);
    if (!row.ok()) return row.status();
    const uint64_t left = row->total >= limit ? 0 : limit - row->total;
    if (left < minimum) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the uses of ", counter, " are all reserved"));
    }
    const uint64_t granted = std::min(wanted, left);
    std::string value(1, static_cast<char>(kReservationFormatV1));
    const uint64_t total = row->total + granted;
    for (int i = 7; i >= 0; --i) {
      value.push_back(static_cast<char>(total >> (8 * i)));
    }
    uint8_t nonce[8];
    if (absl::Status r = crypto::FillPublicRandom(absl::MakeSpan(nonce));
        !r.ok()) {
      return r;
    }
    value.append(reinterpret_cast<const char*>(nonce), sizeof(nonce));
    storage::Transaction t;
    t.conditions.push_back({storage::Table::kShared, key, row->bytes});
    t.writes.push_back({storage::Table::kShared, key, value});
    absl::Status s = storage::CommitUnaudited(*store_, t);
    if (absl::IsUnknown(s)) {
      absl::StatusOr<Row> back = ReadRow(*store_, key);
      if (!back.ok()) return back.status();
      s = back->bytes == value ? absl::OkStatus()
                               : absl::FailedPreconditionError("not written");
    }
    if (s.ok()) return Grant{.granted = granted, .total = total};
    if (!absl::IsFailedPrecondition(s)) return s;
  }
  return absl::UnavailableError(
      absl::StrCat("could not reserve uses of ", counter,
                   ": too many concurrent reservations"));
}

}  // namespace cardvault::coordination
