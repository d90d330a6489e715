#include "server/vault/backup_manifest.h"

#include <map>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "server/audit/audit_chain.h"
#include "server/crypto/sha256.h"
#include "server/util/big_endian.h"
#include "server/vault/kek_manager.h"
#include "server/vault/wrapped_keys.h"

namespace cardvault::vault {
namespace {

// Records read per Scan of a token-data table.
constexpr size_t kScanChunk = 4096;

constexpr const char* kTableNames[storage::kNumTables] = {
    "tokens", "pan_index", "idempotency", "shared"};

// Accumulates one table's digest.
class TableSummer {
 public:
  void Add(absl::string_view key, absl::string_view value) {
    std::string lengths;
    util::AppendBigEndian32(static_cast<uint32_t>(key.size()), &lengths);
    sha_.Update(lengths);
    sha_.Update(key);
    lengths.clear();
    util::AppendBigEndian32(static_cast<uint32_t>(value.size()), &lengths);
    sha_.Update(lengths);
    sha_.Update(value);
    ++records_;
    bytes_ += key.size() + value.size();
  }
  void Finish(absl::string_view name, BackupManifest* out) {
    storage::v1::TableDigest* t = out->add_tables();
    t->set_table(std::string(name));
    t->set_records(records_);
    t->set_bytes(bytes_);
    t->set_sha256(sha_.Finish());
  }

 private:
  crypto::Sha256 sha_;
  uint64_t records_ = 0;
  uint64_t bytes_ = 0;
};

}  // namespace

namespace {
constexpr size_t kManifestMacBytes = 32;
}  // namespace

std::string EncodeBackupManifest(
    const BackupManifest& manifest,
    const std::function<std::string(absl::string_view)>& authenticate) {
  const std::string body = audit::SerializeDeterministic(manifest);
  std::string out(1, static_cast<char>(kBackupManifestFormatV1));
  out.append(authenticate(absl::StrCat(kBackupManifestMacLabel, body)));
  out.append(body);
  return out;
}

absl::StatusOr<BackupManifest> DecodeBackupManifest(absl::string_view bytes) {
  BackupManifest manifest;
  if (bytes.size() < 1 + kManifestMacBytes ||
      static_cast<uint8_t>(bytes[0]) != kBackupManifestFormatV1 ||
      bytes.size() > 1 + kManifestMacBytes + kMaxBackupManifestBytes ||
      !manifest.ParseFromArray(
          bytes.data() + 1 + kManifestMacBytes,
          static_cast<int>(bytes.size() - 1 - kManifestMacBytes))) {
    return absl::DataLossError("backup manifest is missing or malformed");
  }
  return manifest;
}

bool VerifyBackupManifestMac(absl::string_view bytes,
                             const crypto::HmacSha256& key) {
  if (bytes.size() < 1 + kManifestMacBytes) return false;
  return key.Verify(absl::StrCat(kBackupManifestMacLabel,
                                 bytes.substr(1 + kManifestMacBytes)),
                    bytes.substr(1, kManifestMacBytes));
}

absl::StatusOr<BackupManifest> DescribeStore(const storage::StoreView& view,
                                             absl::Time now) {
  BackupManifest m;
  m.set_create_time_ms(absl::ToUnixMillis(now));
  for (int t = 0; t < storage::kNumTables; ++t) {
    TableSummer sum;
    std::string after;
    for (;;) {
      absl::StatusOr<std::vector<std::pair<std::string, std::string>>> chunk =
          view.records().Scan(static_cast<storage::Table>(t), after,
                              kScanChunk);
      if (!chunk.ok()) return chunk.status();
      for (const auto& [key, value] : *chunk) sum.Add(key, value);
      if (chunk->size() < kScanChunk) break;
      after = chunk->back().first;
    }
    sum.Finish(kTableNames[t], &m);
  }

  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> keys =
      view.keys().ListKeys();
  if (!keys.ok()) return keys.status();
  TableSummer key_sum;
  std::set<std::string> labels;
  for (const auto& [id, record] : *keys) {
    key_sum.Add(id, record);
    if (id == kKekStateId) continue;
    absl::StatusOr<std::optional<std::string>> label = KekLabelOf(id, record);
    if (!label.ok()) continue;  // not a wrapped key (e.g. a restore marker)
    if (label->has_value()) labels.insert(**label);
    if (absl::string_view v(id); absl::ConsumePrefix(&v, kDataKeyPrefix)) {
      uint32_t version = 0;
      if (absl::SimpleHexAtoi(v, &version)) {
        if (label->has_value()) {
          m.add_data_key_versions(version);
        } else {
          m.add_destroyed_data_key_versions(version);
        }
      }
    }
  }
  key_sum.Finish("keys", &m);
  if (absl::StatusOr<KekState> kek = ReadKekState(&view.keys()); kek.ok()) {
    m.set_kek_generation(kek->generation);
    labels.insert(kek->current);
  }
  for (const std::string& label : labels) {
    storage::v1::KekReference* k = m.add_keks();
    k->set_label(label);
    k->set_generation(KekGenerationOf(label));
  }

  TableSummer audit_sum;
  uint64_t first = 0;
  absl::Status scanned = view.audit().ScanAudit(
      0, [&](uint64_t sequence, absl::string_view record) {
        audit_sum.Add(absl::StrCat(sequence), record);
        if (sequence > 0 && first == 0) first = sequence;
        return true;
      });
  if (!scanned.ok()) return scanned;
  audit_sum.Finish("audit", &m);
  m.set_audit_first_sequence(first);
  absl::StatusOr<std::optional<std::pair<uint64_t, std::string>>> head =
      view.audit().LastAuditRecord();
  if (!head.ok()) return head.status();
  if (head->has_value()) {
    absl::StatusOr<std::string> mac = audit::RecordMac((*head)->second);
    absl::StatusOr<uint32_t> key_version =
        audit::RecordKeyVersion((*head)->second);
    if (!mac.ok()) return mac.status();
    if (!key_version.ok()) return key_version.status();
    m.set_audit_head_sequence((*head)->first);
    m.set_audit_head_mac(*mac);
    m.set_audit_key_version(*key_version);
  }
  return m;
}

std::vector<std::string> CompareTableDigests(const BackupManifest& expected,
                                             const BackupManifest& actual) {
  std::map<std::string, const storage::v1::TableDigest*> got;
  for (const auto& t : actual.tables()) got[t.table()] = &t;
  std::vector<std::string> problems;
  for (const auto& t : expected.tables()) {
    auto it = got.find(t.table());
    if (it == got.end()) {
      problems.push_back(absl::StrCat("table ", t.table(), " is missing"));
    } else if (it->second->records() != t.records() ||
               it->second->bytes() != t.bytes() ||
               it->second->sha256() != t.sha256()) {
      problems.push_back(absl::StrCat(
          "table ", t.table(), " differs from the manifest: ",
          it->second->records(), " records (manifest ", t.records(), ")"));
    }
  }
  return problems;
}

}  // namespace cardvault::vault
