#include "server/vault/reencryptor.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/util/log.h"
#include "server/vault/card_record.h"

namespace cardvault::vault {
namespace {

// Chunks whose compare-and-set lost to concurrent changes are read again at
// most this many times before the pass gives up (to be retried next pass).
constexpr int kMaxChunkAttempts = 5;

}  // namespace

absl::StatusOr<std::unique_ptr<Reencryptor>> Reencryptor::Create(
    const storage::RecordStore* records, const KeyRing* keys,
    const commit::WritePath* audit, Options options) {
  if (records == nullptr || keys == nullptr || audit == nullptr ||
      options.chunk_records == 0) {
    return absl::InvalidArgumentError("bad re-encryption job arguments");
  }
  return std::unique_ptr<Reencryptor>(
      new Reencryptor(records, keys, audit, options));
}

absl::Status Reencryptor::RunScheduledPass(
    const storage::Condition& fence) const {
  if (keys_->DecryptOnlyVersions().empty()) {
    ++passes_;  // nothing can be under an old key
    return absl::OkStatus();
  }
  return RunPass(fence).status();
}

absl::StatusOr<Reencryptor::PassResult> Reencryptor::RunPass(
    const std::optional<storage::Condition>& fence) const {
  absl::MutexLock pass(&pass_mu_);
  const absl::Time started = keys_->Now();
  // Writes sealed under a key that has since stopped being primary finish
  // first, so that the pass cannot miss their records.
  for (uint32_t version : keys_->DecryptOnlyVersions()) {
    keys_->AwaitNoLeases(version);
  }
  PassResult result;
  std::string cursor;
  while (true) {
    // A stopping server leaves the rest to the next pass.
    if (stop_.HasBeenNotified()) {
      return absl::CancelledError("re-encryption pass stopped");
    }
    absl::Status chunk_status;
    std::vector<std::pair<std::string, std::string>> chunk;
    for (int attempt = 0; attempt < kMaxChunkAttempts; ++attempt) {
      absl::StatusOr<std::vector<std::pair<std::string, std::string>>> read =
          records_->Scan(storage::Table::kTokens, cursor,
                         options_.chunk_records);
      if (!read.ok()) return read.status();
      chunk = *std::move(read);
      PassResult chunk_result;
      chunk_status = ReencryptChunk(chunk, fence, &chunk_result);
      if (absl::IsAborted(chunk_status)) continue;  // read it again
      if (!chunk_status.ok()) return chunk_status;
      result.scanned += chunk_result.scanned;
      result.reencrypted += chunk_result.reencrypted;
      for (const auto& [v, n] : chunk_result.records_by_version) {
        result.records_by_version[v] += n;
      }
      break;
    }
    if (!chunk_status.ok()) return chunk_status;
    if (chunk.empty()) break;
    cursor = chunk.back().first;
  }
  keys_->RecordPass(result.records_by_version, started);
  const uint32_t primary = keys_->primary_version();
  uint64_t pending = 0;
  for (const auto& [v, n] : result.records_by_version) {
    if (v != primary) pending += n;
  }
  pending_ = pending;
  ++passes_;
  return result;
}

absl::Status Reencryptor::ReencryptChunk(
    const std::vector<std::pair<std::string, std::string>>& chunk,
    const std::optional<storage::Condition>& fence, PassResult* result) const {
  // (index in `chunk`, opened record) of records under other keys.
  std::vector<std::pair<size_t, OpenedCard>> stale;
  for (size_t i = 0; i < chunk.size(); ++i) {
    const auto& [token, record] = chunk[i];
    ++result->scanned;
    absl::StatusOr<RecordHeader> header = ParseRecordHeader(record);
    if (!header.ok()) {
      util::LogError(absl::StrCat("re-encryption: unreadable record header (",
                                  header.status().message(), ")"));
      continue;
    }
    if (header->key_version == keys_->primary_version()) {
      ++result->records_by_version[header->key_version];
      continue;
    }
    absl::StatusOr<OpenedCard> opened = OpenCardRecord(*keys_, token, record);
    if (!opened.ok()) {
      // Left where it is, and counted, so its key is never retired.
      ++result->records_by_version[header->key_version];
      util::LogError(absl::StrCat(
          "re-encryption: a record under ", DataKeyId(header->key_version),
          " does not open: ", opened.status().message()));
      continue;
    }
    stale.emplace_back(i, *std::move(opened));
  }
  if (stale.empty()) return absl::OkStatus();
  absl::StatusOr<KeyRing::Lease> lease =
      keys_->LeasePrimary(stale.size(), KeyRing::Use::kReencryption);
  if (!lease.ok()) return lease.status();
  commit::Mutation mutation;
  if (fence.has_value()) mutation.conditions.push_back(*fence);
  std::map<uint32_t, uint64_t> moved_from;
  for (auto& [i, opened] : stale) {
    const auto& [token, old] = chunk[i];
    ++moved_from[opened.header.key_version];
    RecordHeader header = opened.header;
    header.key_version = lease->version();
    absl::StatusOr<std::string> resealed =
        SealCardRecord(lease->key(), header, token, opened.card);
    if (!resealed.ok()) return resealed.status();
    mutation.conditions.push_back({storage::Table::kTokens, token, old});
    mutation.writes.push_back(
        {storage::Table::kTokens, token, *std::move(resealed)});
  }
  mutation.counter_adds.push_back(
      {EncryptionsCounterId(lease->version()), stale.size()});
  audit::AuditEvent event = audit::ServerEvent(v1::KEY_EVENT, absl::Now());
  std::string from;
  for (const auto& [v, n] : moved_from) {
    absl::StrAppend(&from, from.empty() ? "" : ", ", n, " from ", DataKeyId(v));
  }
  event.set_detail(absl::StrCat("re-encrypted ", stale.size(),
                                " records under ", DataKeyId(lease->version()),
                                " (", from, ")"));
  absl::Status written = audit_->Append(std::move(event), std::move(mutation));
  if (!written.ok()) return written;
  result->reencrypted += stale.size();
  result->records_by_version[lease->version()] += stale.size();
  reencrypted_total_ += stale.size();
  return absl::OkStatus();
}

}  // namespace cardvault::vault
