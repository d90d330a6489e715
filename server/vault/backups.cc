#include "server/vault/backups.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/util/log.h"
#include "server/vault/audit_event.h"
#include "server/vault/card_record.h"
#include "server/vault/kek_manager.h"
#include "server/vault/key_ring.h"
#include "server/vault/restore.h"
#include "server/vault/wrapped_keys.h"

namespace cardvault::vault {
namespace {

// Records read per Scan while opening a sample.
constexpr size_t kScanChunk = 1024;

const storage::v1::TableDigest* TableOf(const BackupManifest& m,
                                        absl::string_view name) {
  for (const auto& t : m.tables()) {
    if (t.table() == name) return &t;
  }
  return nullptr;
}

uint64_t RecordsOf(const BackupManifest& m, absl::string_view name) {
  const storage::v1::TableDigest* t = TableOf(m, name);
  return t == nullptr ? 0 : t->records();
}

std::string Describe(const BackupSummary& b) {
  const BackupManifest& m = b.manifest;
  std::vector<std::string> keks;
  for (const auto& k : m.keks())
    keks.push_back(absl::StrCat("\"", k.label(), "\""));
  return absl::StrCat(
      "backup ", b.stored.id, ": audit head ", m.audit_head_sequence(),
      " mac=", absl::BytesToHexString(m.audit_head_mac()), ", ",
      RecordsOf(m, "tokens"), " tokens, ", b.stored.size_bytes, " bytes in ",
      b.stored.files, " files (", b.stored.new_bytes, " bytes in ",
      b.stored.new_files, " new), KEKs ", absl::StrJoin(keks, ", "));
}

}  // namespace

absl::StatusOr<std::vector<BackupSummary>> ListBackups(
    const storage::BackupStore& store) {
  absl::StatusOr<std::vector<storage::StoredBackup>> all = store.List();
  if (!all.ok()) return all.status();
  std::vector<BackupSummary> out;
  for (storage::StoredBackup& b : *all) {
    BackupSummary s;
    absl::StatusOr<BackupManifest> m = DecodeBackupManifest(b.metadata);
    s.manifest_ok = m.ok();
    if (m.ok()) s.manifest = *std::move(m);
    s.stored = std::move(b);
    out.push_back(std::move(s));
  }
  return out;
}

absl::StatusOr<BackupVerification> VerifyBackup(
    const storage::BackupStore& store, uint32_t id,
    const hsm::KeyWrapper& wrapper, const VerifyOptions& options,
    const storage::AuditStore* live_trail) {
  BackupVerification v;
  v.id = id;
  absl::StatusOr<storage::StoredBackup> stored = store.Get(id);
  if (!stored.ok()) return stored.status();
  v.backup.stored = *stored;
  v.files_checked = stored->files;
  auto problem = [&](std::string what) {
    v.problems.push_back(std::move(what));
  };
  absl::StatusOr<BackupManifest> manifest =
      DecodeBackupManifest(stored->metadata);
  if (manifest.ok()) {
    v.backup.manifest = *manifest;
  } else {
    v.backup.manifest_ok = false;
    problem(std::string(manifest.status().message()));
  }
  if (absl::Status s = store.VerifyFiles(id); !s.ok()) {
    problem(absl::StrCat("files: ", s.message()));
  }
  for (const auto& k : v.backup.manifest.keks()) {
    if (absl::Status s = wrapper.CheckKek(k.label()); !s.ok()) {
      problem(absl::StrCat("the HSM has no usable KEK \"", k.label(),
                           "\" (generation ", k.generation(),
                           ") that this backup needs: ", s.message()));
    }
  }
  absl::StatusOr<std::unique_ptr<storage::StoreView>> view = store.Open(id);
  if (!view.ok()) {
    problem(absl::StrCat("cannot open: ", view.status().message()));
    v.ok = false;
    return v;
  }
  if (manifest.ok()) {
    absl::StatusOr<BackupManifest> actual =
        DescribeStore(**view, absl::FromUnixMillis(manifest->create_time_ms()));
    if (!actual.ok()) {
      problem(absl::StrCat("cannot read: ", actual.status().message()));
    } else {
      for (std::string& p : CompareTableDigests(*manifest, *actual)) {
        problem(std::move(p));
      }
      if (actual->audit_head_sequence() != manifest->audit_head_sequence() ||
          actual->audit_head_mac() != manifest->audit_head_mac()) {
        problem("audit head differs from the manifest");
      }
      auto labels = [](const BackupManifest& x) {
        std::vector<std::string> out;
        for (const auto& k : x.keks()) out.push_back(k.label());
        return out;
      };
      if (labels(*actual) != labels(*manifest) ||
          actual->kek_generation() != manifest->kek_generation()) {
        problem("the KEKs the backup needs differ from the manifest's");
      }
      if (!std::equal(actual->data_key_versions().begin(),
                      actual->data_key_versions().end(),
                      manifest->data_key_versions().begin(),
                      manifest->data_key_versions().end()) ||
          !std::equal(actual->destroyed_data_key_versions().begin(),
                      actual->destroyed_data_key_versions().end(),
                      manifest->destroyed_data_key_versions().begin(),
                      manifest->destroyed_data_key_versions().end())) {
        problem("the data keys differ from the manifest's");
      }
    }
  }
  v.records_total = RecordsOf(v.backup.manifest, "tokens");
  absl::StatusOr<std::unique_ptr<KekManager>> kek =
      KekManager::OpenReadOnly(&(*view)->keys(), &wrapper, {});
  if (!kek.ok()) {
    problem(absl::StrCat("KEK: ", kek.status().message()));
    v.ok = false;
    return v;
  }
  KeyRing::Options ring_options;
  ring_options.create_first_key = false;
  ring_options.keys_in_hsm = options.keys_in_hsm;
  absl::StatusOr<std::unique_ptr<KeyRing>> ring =
      KeyRing::Load(kek->get(), ring_options);
  if (!ring.ok()) {
    problem(absl::StrCat("data keys: ", ring.status().message()));
  }
  absl::StatusOr<MacKey> audit_key =
      LoadMacKey(kek->get(), kAuditKeyPrefix, /*create_if_missing=*/false);
  if (!audit_key.ok()) {
    problem(absl::StrCat("audit key: ", audit_key.status().message()));
  } else {
    if (!VerifyBackupManifestMac(stored->metadata, *audit_key->mac)) {
      problem("the manifest does not verify under the backup's audit key");
    }
    absl::StatusOr<audit::ChainReport> chain = audit::VerifyStoredChain(
        (*view)->audit(), *audit_key->mac, audit_key->version,
        options.audit_retention, options.now);
    if (!chain.ok()) {
      problem(absl::StrCat("audit chain: ", chain.status().message()));
    } else {
      v.chain = *std::move(chain);
      if (!v.chain.intact) {
        problem(absl::StrCat("audit chain broken at ",
                             v.chain.first_bad_sequence, ": ",
                             v.chain.problem));
      }
    }
  }
  if (ring.ok()) {
    const uint64_t step =
        options.all_records || options.sample_records == 0
            ? 1
            : std::max<uint64_t>(1, v.records_total / options.sample_records);
    uint64_t index = 0;
    uint64_t failed = 0;
    std::string after;
    for (;;) {
      absl::StatusOr<std::vector<std::pair<std::string, std::string>>> chunk =
          (*view)->records().Scan(storage::Table::kTokens, after, kScanChunk);
      if (!chunk.ok()) {
        problem(absl::StrCat("records: ", chunk.status().message()));
        break;
      }
      for (const auto& [token, record] : *chunk) {
        if (index++ % step != 0) continue;
        if (OpenCardRecord(**ring, token, record).ok()) {
          ++v.records_opened;
        } else {
          ++failed;
        }
      }
      if (chunk->size() < kScanChunk) break;
      after = chunk->back().first;
    }
    if (failed > 0) {
      problem(absl::StrCat(failed, " of ", failed + v.records_opened,
                           " card records opened do not open"));
    }
  }
  if (live_trail != nullptr && v.backup.manifest_ok) {
    absl::StatusOr<std::vector<std::string>> deleted = TokensDeletedAfter(
        *live_trail, v.backup.manifest.audit_head_sequence());
    if (deleted.ok()) v.deletions_after = static_cast<int64_t>(deleted->size());
  }
  v.ok = v.problems.empty();
  return v;
}

absl::StatusOr<std::unique_ptr<Backups>> Backups::Create(Dependencies deps,
                                                         Options options) {
  if (deps.store == nullptr || deps.wrapper == nullptr ||
      deps.policy == nullptr || deps.audit == nullptr || !options.now) {
    return absl::InvalidArgumentError("backup dependencies must be set");
  }
  if (options.interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("backup interval must not be negative");
  }
  std::unique_ptr<Backups> backups(new Backups(deps, std::move(options)));
  absl::StatusOr<std::unique_ptr<util::BlockingExecutor>> worker =
      util::BlockingExecutor::Create({.threads = 1, .max_queued = 2});
  if (!worker.ok()) return worker.status();
  backups->worker_ = *std::move(worker);
  // Lowering a thread's priority needs no privilege (raising it back would).
  const int nice = backups->options_.worker_nice;
  (void)backups->worker_->Schedule([nice] {
    (void)setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)),
                      nice);
  });
  if (backups->options_.interval > absl::ZeroDuration()) {
    backups->scheduler_ =
        std::thread([b = backups.get()] { b->ScheduleLoop(); });
  }
  return backups;
}

Backups::~Backups() {
  stop_.Notify();
  if (scheduler_.joinable()) scheduler_.join();
  worker_.reset();
}

void Backups::ScheduleLoop() {
  while (!stop_.WaitForNotificationWithTimeout(options_.interval)) {
    // A scheduled backup that cannot start (one asked for, or a
    // verification, still runs) is a missed backup too: the RPO is late.
    const uint64_t failed_before = failures_.load();
    absl::StatusOr<BackupSummary> b = TakeBackup("schedule");
    if (!b.ok() && failures_.load() == failed_before) ++failures_;
    if (!b.ok()) {
      util::LogError(absl::StrCat("ALERT scheduled backup failed: ",
                                  b.status().ToString()));
    }
  }
}

absl::Status Backups::Record(const auth::Caller& caller,
                             ::cardvault::v1::EventType type,
                             absl::string_view rpc, absl::string_view detail,
                             const absl::Status& status) const {
  audit::AuditEvent event =
      CallerEvent(caller, *deps_.policy->Current(), deps_.audit->marker(), type,
                  rpc, options_.now());
  event.set_detail(std::string(detail));
  SetOutcome(status, &event);
  if (!deps_.audit->Append(std::move(event)).ok()) {
    return absl::UnavailableError("audit trail unavailable");
  }
  return status;
}

absl::StatusOr<BackupSummary> Backups::TakeBackup(absl::string_view by) const {
  // One backup at a time; another asked for meanwhile is refused, not
  // queued, so a burst of requests costs one backup.
  if (taking_.exchange(true)) {
    return absl::UnavailableError(
        "a backup is being taken; ask again when it is done");
  }
  absl::StatusOr<BackupSummary> result;
  absl::Notification done;
  if (!worker_->Schedule([&] {
        result = TakeBackupNow(by);
        done.Notify();
      })) {
    result = absl::UnavailableError("the backup worker is stopping or busy");
    done.Notify();
  }
  done.WaitForNotification();
  taking_ = false;
  return result;
}

absl::StatusOr<BackupSummary> Backups::TakeBackupNow(
    absl::string_view by) const {
  auth::Caller server;
  server.identity = std::string(audit::kServerIdentity);
  absl::StatusOr<BackupSummary> result;
  {
    // Shared: a backup never waits for a verification (the store itself
    // serialises what must be).
    absl::ReaderMutexLock lock(&mu_);
    absl::StatusOr<storage::StoredBackup> stored = deps_.store->Create(
        [this](const storage::StoreView& copy) -> absl::StatusOr<std::string> {
          absl::StatusOr<BackupManifest> m =
              DescribeStore(copy, options_.now());
          if (!m.ok()) return m.status();
          if (m->ByteSizeLong() > kMaxBackupManifestBytes) {
            return absl::ResourceExhaustedError(
                "the backup manifest would exceed kMaxBackupManifestBytes");
          }
          return EncodeBackupManifest(*m, [this](absl::string_view data) {
            return deps_.audit->Authenticate(data);
          });
        });
    if (stored.ok()) {
      BackupSummary s;
      absl::StatusOr<BackupManifest> m = DecodeBackupManifest(stored->metadata);
      if (m.ok()) s.manifest = *std::move(m);
      s.stored = *std::move(stored);
      result = std::move(s);
    } else {
      result = stored.status();
    }
  }
  if (!result.ok()) {
    ++failures_;
    (void)Record(server, v1::BACKUP, "",
                 absl::StrCat("backup (", by, ") failed"), result.status());
    return result;
  }
  ++taken_;
  last_success_ = absl::ToUnixSeconds(options_.now());
  const std::string detail = absl::StrCat(Describe(*result), "; taken by ", by);
  util::LogInfo(detail);
  if (absl::Status s = Record(server, v1::BACKUP, "", detail, absl::OkStatus());
      !s.ok()) {
    return s;
  }
  if (options_.keep > 0) {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<std::vector<storage::StoredBackup>> all =
        deps_.store->List();
    if (all.ok() && all->size() > options_.keep) {
      for (size_t i = 0; i + options_.keep < all->size(); ++i) {
        const uint32_t old = (*all)[i].id;
        const absl::Status deleted = deps_.store->Delete(old);
        (void)Record(server, v1::BACKUP, "",
                     absl::StrCat("deleted backup ", old,
                                  " (backup.keep = ", options_.keep, ")"),
                     deleted);
      }
    }
  }
  return result;
}

absl::StatusOr<BackupSummary> Backups::Create(
    const auth::Caller& caller) const {
  absl::Status allowed = deps_.policy->Current()->Check(
      caller, auth::Permission::kAdministerBackups);
  if (!allowed.ok()) {
    return Record(caller, v1::BACKUP_ADMIN, kCreateBackupRpc, "create backup",
                  allowed);
  }
  absl::StatusOr<BackupSummary> b = TakeBackup(RecordedIdentity(
      caller, *deps_.policy->Current(), deps_.audit->marker()));
  if (absl::Status s =
          Record(caller, v1::BACKUP_ADMIN, kCreateBackupRpc,
                 b.ok() ? absl::StrCat("create backup: backup ", b->stored.id)
                        : std::string("create backup"),
                 b.status());
      !s.ok()) {
    return s;
  }
  return b;
}

absl::StatusOr<std::vector<BackupSummary>> Backups::List(
    const auth::Caller& caller) const {
  if (absl::Status s =
          Record(caller, v1::BACKUP_ADMIN, kListBackupsRpc, "list backups",
                 deps_.policy->Current()->Check(
                     caller, auth::Permission::kAdministerBackups));
      !s.ok()) {
    return s;
  }
  absl::ReaderMutexLock lock(&mu_);
  return ListBackups(*deps_.store);
}

absl::StatusOr<BackupVerification> Backups::Verify(const auth::Caller& caller,
                                                   uint32_t id,
                                                   bool all_records) const {
  absl::Status allowed = deps_.policy->Current()->Check(
      caller, auth::Permission::kAdministerBackups);
  const std::string what =
      absl::StrCat("verify backup ", id, all_records ? " (all records)" : "");
  if (!allowed.ok()) {
    return Record(caller, v1::BACKUP_ADMIN, kVerifyBackupRpc, what, allowed);
  }
  // One verification at a time: a flood of them (each may read every
  // record) is refused, not queued.
  if (verifying_.exchange(true)) {
    return Record(caller, v1::BACKUP_ADMIN, kVerifyBackupRpc, what,
                  absl::UnavailableError(
                      "a backup verification is in progress; try again later"));
  }
  absl::StatusOr<BackupVerification> v;
  {
    // Shared with backups being taken; deletions wait for it.
    absl::ReaderMutexLock lock(&mu_);
    VerifyOptions verify = options_.verify;
    verify.all_records = all_records;
    verify.now = options_.now();
    v = VerifyBackup(*deps_.store, id, *deps_.wrapper, verify,
                     deps_.live_trail);
  }
  verifying_ = false;
  const std::string outcome =
      !v.ok() ? what
      : v->ok ? absl::StrCat(what, ": ok, ", v->records_opened, " of ",
                             v->records_total, " records opened")
              : absl::StrCat(what, ": ", v->problems.size(), " problems");
  if (absl::Status s = Record(caller, v1::BACKUP_ADMIN, kVerifyBackupRpc,
                              outcome, v.status());
      !s.ok()) {
    return s;
  }
  return v;
}

absl::Status Backups::Delete(const auth::Caller& caller, uint32_t id) const {
  absl::Status allowed = deps_.policy->Current()->Check(
      caller, auth::Permission::kAdministerBackups);
  absl::Status deleted = allowed;
  if (allowed.ok()) {
    absl::MutexLock lock(&mu_);
    deleted = deps_.store->Delete(id);
  }
  return Record(caller, v1::BACKUP_ADMIN, kDeleteBackupRpc,
                absl::StrCat("delete backup ", id), deleted);
}

}  // namespace cardvault::vault
