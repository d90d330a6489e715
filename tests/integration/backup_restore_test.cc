// Backups and restores of a real cardvaultd (SoftHSM2 keys, RocksDB records
// and BackupEngine, mutual TLS): taken under Tokenize load, killed with
// SIGKILL in the middle, restored after more writes, deletions and a KEK
// rotation, and refused when the HSM lacks a KEK.
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/vault_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/rocksdb_backup.h"
#include "tests/testing/clients.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_cards.h"
#include "tests/testing/test_env.h"

namespace cardvault {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;
using ::testing::HasSubstr;

struct ToolRun {
  int exit_code = -1;
  std::string output;
};

// Runs `command` through the shell; its exit status and combined output.
ToolRun RunTool(const std::string& command) {
  ToolRun run;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return run;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), p)) > 0) {
    run.output.append(buffer, n);
  }
  const int status = pclose(p);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

// Every file under `dir` with its size and modification time, to show that a
// refused restore changed nothing.
std::map<std::string, std::string> Listing(const std::string& dir) {
  std::map<std::string, std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir, ec)) {
    if (!e.is_regular_file()) continue;
    out[e.path().string()] = absl::StrCat(
        e.file_size(), "@", e.last_write_time().time_since_epoch().count());
  }
  return out;
}

class BackupRestoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_ = testing::TestEnv::Create();
    std::ofstream(env_->config_path(), std::ios::app)
        << "backup { directory: \"" << backup_dir() << "\" keep: 10 }\n";
    env_->IssueClient("admin2", testing::TestEnv::Identity("admin2"));
    env_->AddToPolicy(
        "bindings { identity: \"spiffe://cardvault.test/admin2\" "
        "roles: ADMIN }");
    log_ = env_->dir() + "/server.log";
    port_ = testing::PickUnusedPort();
  }
  std::string backup_dir() const { return env_->dir() + "/backups"; }
  void Start() {
    auto server =
        testing::ServerProcess::Start(env_->config_path(), log_, port_);
    ASSERT_THAT(server, IsOk()) << testing::ReadFileOrEmpty(log_);
    server_ = *std::move(server);
  }
  void Stop() {
    if (server_ != nullptr) EXPECT_EQ(server_->Terminate(), 0);
    server_.reset();
  }
  std::unique_ptr<client::VaultClient> Client(absl::string_view name) {
    return testing::ClientFor(*env_, server_->address(), name);
  }
  ToolRun Cardvaultd(absl::string_view flags) {
    return RunTool(absl::StrCat(CARDVAULTD_PATH,
                                " --config=", env_->config_path(), " ", flags));
  }
  static v1::Card CardFor(const std::string& pan) {
    v1::Card card;
    card.set_pan(pan);
    card.set_exp_month(12);
    card.set_exp_year(2031);
    return card;
  }
  // Tokenizes every PAN; the tokens in order.
  std::vector<std::string> TokenizeAll(const std::vector<std::string>& pans) {
    auto pos = Client("pos");
    std::vector<std::string> tokens;
    for (const std::string& pan : pans) {
      absl::StatusOr<std::string> t = pos->Tokenize(CardFor(pan));
      EXPECT_THAT(t, IsOk());
      tokens.push_back(t.ok() ? *t : "");
    }
    return tokens;
  }
  // Proposes `request` as admin and approves it as admin2.
  v1::Operation DualControl(v1::ProposeOperationRequest request) {
    request.set_reason("backup test");
    absl::StatusOr<v1::Operation> op =
        Client("admin")->ProposeOperation(request);
    EXPECT_THAT(op, IsOk());
    if (!op.ok()) return {};
    absl::StatusOr<v1::Operation> done =
        Client("admin2")->ApproveOperation(op->id());
    EXPECT_THAT(done, IsOk());
    return done.ok() ? *done : v1::Operation();
  }
  // Every token detokenizes to its PAN.
  void ExpectDetokenizes(const std::vector<std::string>& tokens,
                         const std::vector<std::string>& pans) {
    auto processor = Client("processor");
    for (size_t i = 0; i < tokens.size(); ++i) {
      absl::StatusOr<v1::Card> card =
          processor->Detokenize(tokens[i], "authorization");
      ASSERT_THAT(card, IsOk()) << i;
      EXPECT_EQ(card->pan(), pans[i]);
    }
  }
  std::vector<v1::AuditEvent> Events(v1::EventType type) {
    std::vector<v1::AuditEvent> out;
    v1::ListEventsRequest request;
    request.set_event_type(type);
    EXPECT_THAT(
        Client("auditor")->ListAuditEvents(
            request, [&](const v1::AuditEvent& e) { out.push_back(e); }),
        IsOk());
    return out;
  }

  std::unique_ptr<testing::TestEnv> env_;
  std::string log_;
  int port_ = 0;
  std::unique_ptr<testing::ServerProcess> server_;
};

TEST_F(BackupRestoreTest, BackupUnderLoadHoldsEveryTokenAcknowledgedBefore) {
  Start();
  // Four writers keep tokenizing; each acknowledgement is stamped with the
  // number of backups completed when it was sent.
  std::atomic<bool> stop{false};
  std::atomic<bool> backup_started{false};
  std::mutex mu;
  // (token, pan) acknowledged before the backup call was made.
  std::vector<std::pair<std::string, std::string>> before;
  std::vector<std::thread> writers;
  for (int w = 0; w < 4; ++w) {
    writers.emplace_back([&, w] {
      auto pos = Client("pos");
      const std::vector<std::string> pans = testing::MakePans(3000, 100 + w);
      for (size_t i = 0; i < pans.size() && !stop.load(); ++i) {
        absl::StatusOr<std::string> t = pos->Tokenize(CardFor(pans[i]));
        ASSERT_THAT(t, IsOk());
        if (!backup_started.load()) {
          std::lock_guard<std::mutex> lock(mu);
          before.emplace_back(*t, pans[i]);
        }
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(1500));
  size_t acknowledged_before = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    acknowledged_before = before.size();
  }
  backup_started = true;
  absl::StatusOr<v1::Backup> backup = Client("admin")->CreateBackup();
  ASSERT_THAT(backup, IsOk());
  absl::SleepFor(absl::Milliseconds(300));
  stop = true;
  for (std::thread& t : writers) t.join();
  ASSERT_GT(acknowledged_before, 100u);
  EXPECT_GE(backup->tokens(), acknowledged_before);
  EXPECT_EQ(backup->id(), 1u);
  ASSERT_EQ(backup->keks_size(), 1);
  EXPECT_EQ(backup->keks(0).label(), "cardvault-kek");
  EXPECT_GT(backup->audit_head().sequence(), acknowledged_before);

  absl::StatusOr<v1::BackupVerification> v =
      Client("admin")->VerifyBackup(backup->id(), /*all_records=*/true);
  ASSERT_THAT(v, IsOk());
  EXPECT_TRUE(v->ok()) << v->DebugString();
  EXPECT_EQ(v->records_opened(), backup->tokens());
  EXPECT_TRUE(v->chain().intact());
  EXPECT_EQ(v->chain().head().sequence(), backup->audit_head().sequence());

  // Once the data has settled, a later backup copies only what is new.
  absl::StatusOr<v1::Backup> second = Client("admin")->CreateBackup();
  ASSERT_THAT(second, IsOk());
  TokenizeAll(testing::MakePans(10, 99));
  absl::StatusOr<v1::Backup> third = Client("admin")->CreateBackup();
  ASSERT_THAT(third, IsOk());
  EXPECT_GT(third->size_bytes(), second->size_bytes() / 2);
  EXPECT_LT(third->new_bytes(), third->size_bytes() / 4)
      << third->DebugString();

  // Every token acknowledged before the first backup is in it: restored,
  // each detokenizes to its PAN.
  std::vector<v1::AuditEvent> recorded = Events(v1::BACKUP);
  ASSERT_GE(recorded.size(), 2u);
  EXPECT_THAT(recorded[0].detail(), HasSubstr("backup 1: audit head"));
  Stop();
  ToolRun restore = Cardvaultd("--restore_backup=1");
  ASSERT_EQ(restore.exit_code, 0) << restore.output;
  Start();
  auto processor = Client("processor");
  for (size_t i = 0; i < before.size();
       i += std::max<size_t>(1, before.size() / 200)) {
    absl::StatusOr<v1::Card> card =
        processor->Detokenize(before[i].first, "authorization");
    ASSERT_THAT(card, IsOk()) << i;
    EXPECT_EQ(card->pan(), before[i].second);
  }
}

TEST_F(BackupRestoreTest, RestoreDrillBringsBackTheBackupAndRecordsIt) {
  Start();
  const std::vector<std::string> pans = testing::MakePans(60, 7);
  const std::vector<std::string> n(pans.begin(), pans.begin() + 40);
  const std::vector<std::string> m(pans.begin() + 40, pans.end());
  const std::vector<std::string> n_tokens = TokenizeAll(n);
  // The CLI prints the new backup's id alone on its last line.
  ToolRun cli = RunTool(
      absl::StrCat(CARDVAULT_CLI_PATH, " --address=", server_->address(),
                   " --pki_dir=", env_->dir(), "/pki backup create"));
  ASSERT_EQ(cli.exit_code, 0) << cli.output;
  std::vector<std::string> lines =
      absl::StrSplit(absl::StripTrailingAsciiWhitespace(cli.output), '\n');
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.back(), "1");
  const std::vector<std::string> m_tokens = TokenizeAll(m);
  auto pos = Client("pos");
  for (int i = 0; i < 5; ++i) {
    EXPECT_THAT(pos->DeleteToken(n_tokens[i]), IsOk());
  }
  // Verify says how many deletions a restore of the backup would undo.
  absl::StatusOr<v1::BackupVerification> v =
      Client("admin")->VerifyBackup(1, false);
  ASSERT_THAT(v, IsOk());
  EXPECT_TRUE(v->ok());
  EXPECT_EQ(v->deletions_after(), 5);
  absl::StatusOr<v1::VerifyChainResponse> before_restore =
      Client("auditor")->VerifyAuditChain();
  ASSERT_THAT(before_restore, IsOk());
  const v1::Checkpoint lost_head = before_restore->head();
  Stop();

  ToolRun restore = Cardvaultd("--restore_backup=1");
  ASSERT_EQ(restore.exit_code, 0) << restore.output;
  EXPECT_THAT(restore.output, HasSubstr("deletions undone: 5"));
  // The old data directory is kept, beside the restored one.
  int kept = 0;
  for (const auto& e : std::filesystem::directory_iterator(env_->dir())) {
    if (absl::StrContains(e.path().filename().string(),
                          "data.before-restore-") &&
        e.is_directory()) {
      ++kept;
    }
  }
  EXPECT_EQ(kept, 1);
  Start();
  ExpectDetokenizes(n_tokens, n);
  auto processor = Client("processor");
  for (const std::string& t : m_tokens) {
    EXPECT_THAT(processor->Detokenize(t, "authorization"),
                StatusIs(absl::StatusCode::kNotFound));
  }
  std::vector<v1::AuditEvent> restores = Events(v1::RESTORE);
  ASSERT_EQ(restores.size(), 1u);
  const v1::RestoreRecord& r = restores[0].restore();
  EXPECT_EQ(r.backup_id(), 1u);
  // The RESTORE event takes the sequence after the lost ones: none is used
  // twice.
  EXPECT_EQ(restores[0].sequence(), r.lost_through() + 1);
  EXPECT_EQ(r.lost_from(), r.backup_head().sequence() + 1);
  // The lost records end with the server's stop, after the last VerifyChain.
  EXPECT_EQ(r.lost_through(), lost_head.sequence() + 1);
  EXPECT_EQ(r.deletions_undone(), 5u);

  // VerifyChain shows the restore, and a checkpoint it lost is reported as
  // lost in it, not as truncation.
  v1::VerifyChainRequest request;
  *request.mutable_expected_checkpoint() = lost_head;
  absl::StatusOr<v1::VerifyChainResponse> chain =
      Client("auditor")->VerifyAuditChain(lost_head);
  ASSERT_THAT(chain, IsOk());
  EXPECT_TRUE(chain->intact()) << chain->problem();
  ASSERT_EQ(chain->restores_size(), 1);
  EXPECT_EQ(chain->restores(0).sequence(), restores[0].sequence());
  EXPECT_EQ(chain->checkpoint_lost_in_restore(), restores[0].sequence());

  // A checkpoint past the head that no restore lost is still truncation.
  v1::Checkpoint ahead = chain->head();
  ahead.set_sequence(lost_head.sequence() + 1000);
  absl::StatusOr<v1::VerifyChainResponse> truncated =
      Client("auditor")->VerifyAuditChain(ahead);
  ASSERT_THAT(truncated, IsOk());
  EXPECT_FALSE(truncated->intact());
  EXPECT_THAT(truncated->problem(), HasSubstr("truncated"));
  // So is a checkpoint of the lost head with another MAC than the one the
  // restore lost.
  v1::Checkpoint forged;
  forged.set_sequence(r.lost_through());
  forged.set_mac(std::string(32, 'x'));
  absl::StatusOr<v1::VerifyChainResponse> wrong =
      Client("auditor")->VerifyAuditChain(forged);
  ASSERT_THAT(wrong, IsOk());
  EXPECT_FALSE(wrong->intact());
}

TEST_F(BackupRestoreTest, KillDuringBackupLeavesCompleteBackupsOrNone) {
  Start();
  {
    auto pos = Client("pos");
    const std::vector<std::string> pans = testing::MakePans(20000, 11);
    for (size_t at = 0; at < pans.size(); at += 1000) {
      v1::TokenizeBatchRequest batch;
      for (size_t i = at; i < at + 1000; ++i) {
        *batch.add_requests()->mutable_card() = CardFor(pans[i]);
      }
      ASSERT_THAT(pos->TokenizeBatch(batch), IsOk());
    }
  }
  std::mt19937 rng(5);
  for (int round = 0; round < 4; ++round) {
    std::thread backup([&] { (void)Client("admin")->CreateBackup(); });
    absl::SleepFor(
        absl::Milliseconds(std::uniform_int_distribution<int>(5, 250)(rng)));
    server_->Kill9();
    backup.join();
    server_.reset();
    Start();
    // Every backup listed verifies; an interrupted one is not listed.
    absl::StatusOr<v1::ListBackupsResponse> all =
        Client("admin")->ListBackups();
    ASSERT_THAT(all, IsOk());
    for (const v1::Backup& b : all->backups()) {
      absl::StatusOr<v1::BackupVerification> v =
          Client("admin")->VerifyBackup(b.id(), false);
      ASSERT_THAT(v, IsOk());
      EXPECT_TRUE(v->ok()) << "round " << round << ": " << v->DebugString();
    }
    EXPECT_THAT(Client("pos")->Tokenize(CardFor("4111111111111111")), IsOk());
  }
  // The staging copy of an interrupted backup does not stay behind forever:
  // the next backup starts by removing it.
  ASSERT_THAT(Client("admin")->CreateBackup(), IsOk());
  EXPECT_FALSE(std::filesystem::exists(env_->data_dir() + ".staging"));
}

TEST_F(BackupRestoreTest, BackupTakenBeforeKekRotationStillRestores) {
  Start();
  const std::vector<std::string> pans = testing::MakePans(20, 3);
  const std::vector<std::string> tokens = TokenizeAll(pans);
  ASSERT_THAT(Client("admin")->CreateBackup(), IsOk());
  v1::ProposeOperationRequest rotate;
  rotate.set_kind(v1::ROTATE_KEK);
  v1::Operation op = DualControl(rotate);
  ASSERT_EQ(op.state(), v1::Operation::EXECUTED) << op.outcome();
  EXPECT_THAT(op.outcome(), HasSubstr("retained"));
  // The old KEK stays in the HSM, decrypt-only, next to the new one.
  EXPECT_THAT(env_->SecretKeyLabels(),
              ::testing::IsSupersetOf(std::vector<std::string>{
                  "cardvault-kek", "cardvault-kek/00000002"}));
  absl::StatusOr<v1::ListKeysResponse> keys = Client("admin")->ListKeys();
  ASSERT_THAT(keys, IsOk());
  std::map<std::string, std::string> states;
  for (const v1::KeyInfo& k : keys->keys()) states[k.id()] = k.state();
  EXPECT_EQ(states["kek/cardvault-kek"], "decrypt-only");
  EXPECT_EQ(states["kek/cardvault-kek/00000002"], "active");
  Stop();

  ToolRun restore = Cardvaultd("--restore_backup=1");
  ASSERT_EQ(restore.exit_code, 0) << restore.output;
  Start();
  ExpectDetokenizes(tokens, pans);
  // The restored vault rolled forward to the KEK it had rotated to, not
  // back to the one the backup names; the newer KEK was not destroyed.
  keys = Client("admin")->ListKeys();
  ASSERT_THAT(keys, IsOk());
  states.clear();
  for (const v1::KeyInfo& k : keys->keys()) states[k.id()] = k.state();
  EXPECT_EQ(states["kek/cardvault-kek/00000002"], "active");
  EXPECT_EQ(states["kek/cardvault-kek"], "decrypt-only");
  EXPECT_THAT(env_->SecretKeyLabels(),
              ::testing::IsSupersetOf(std::vector<std::string>{
                  "cardvault-kek", "cardvault-kek/00000002"}));
}

TEST_F(BackupRestoreTest, RestoreIsRefusedNamingTheMissingKek) {
  Start();
  const std::vector<std::string> tokens = TokenizeAll(testing::MakePans(5, 9));
  ASSERT_THAT(Client("admin")->CreateBackup(), IsOk());
  v1::ProposeOperationRequest rotate;
  rotate.set_kind(v1::ROTATE_KEK);
  ASSERT_EQ(DualControl(rotate).state(), v1::Operation::EXECUTED);
  // Destroying the retained KEK is dual control, and says which backups it
  // makes unreadable.
  v1::ProposeOperationRequest destroy;
  destroy.set_kind(v1::DESTROY_KEK);
  destroy.set_key_version(1);
  v1::Operation destroyed = DualControl(destroy);
  ASSERT_EQ(destroyed.state(), v1::Operation::EXECUTED) << destroyed.outcome();
  EXPECT_THAT(destroyed.outcome(), HasSubstr("backups now unreadable: 1"));
  EXPECT_THAT(env_->SecretKeyLabels(),
              ::testing::Not(::testing::Contains("cardvault-kek")));
  // The backup no longer verifies, and says why.
  absl::StatusOr<v1::BackupVerification> v =
      Client("admin")->VerifyBackup(1, false);
  ASSERT_THAT(v, IsOk());
  EXPECT_FALSE(v->ok());
  EXPECT_THAT(absl::StrJoin(v->problems(), "\n"),
              HasSubstr("KEK \"cardvault-kek\""));
  Stop();

  const auto files =
      std::make_pair(Listing(env_->data_dir()), Listing(backup_dir()));
  ToolRun restore = Cardvaultd("--restore_backup=1");
  EXPECT_NE(restore.exit_code, 0);
  EXPECT_THAT(restore.output, HasSubstr("needs KEK \"cardvault-kek\""));
  EXPECT_THAT(restore.output, HasSubstr("nothing was changed"));
  EXPECT_EQ(Listing(env_->data_dir()), files.first);
  EXPECT_EQ(Listing(backup_dir()), files.second);
  EXPECT_FALSE(std::filesystem::exists(env_->data_dir() + ".restoring"));
  Start();
  EXPECT_THAT(Client("processor")->Detokenize(tokens[0], "authorization"),
              IsOk());
}

// The restore exchanges "<data dir>.restoring" with the data directory and
// then renames what it swapped out aside: a crash between the two leaves the
// OLD data directory at "<data dir>.restoring". Running the restore again
// must not take it for a stale copy and remove it.
TEST_F(BackupRestoreTest, RetriedRestoreAfterACrashKeepsTheOldDataDirectory) {
  Start();
  TokenizeAll(testing::MakePans(5, 31));
  ASSERT_THAT(Client("admin")->CreateBackup(), IsOk());
  const std::vector<std::string> later_pans = testing::MakePans(5, 32);
  const std::vector<std::string> later = TokenizeAll(later_pans);
  Stop();
  ToolRun restore = Cardvaultd("--restore_backup=1");
  ASSERT_EQ(restore.exit_code, 0) << restore.output;
  std::string aside;
  for (const auto& e : std::filesystem::directory_iterator(env_->dir())) {
    if (absl::StrContains(e.path().filename().string(),
                          "data.before-restore-") &&
        e.is_directory()) {
      aside = e.path().string();
    }
  }
  ASSERT_FALSE(aside.empty());
  // The state the crash leaves: restored data in place (marker included),
  // the old data directory still under the exchange's name.
  const std::string restoring = env_->data_dir() + ".restoring";
  std::filesystem::rename(aside, restoring);
  const auto old_files = Listing(restoring);
  ASSERT_FALSE(old_files.empty());

  ToolRun again = Cardvaultd("--restore_backup=1");
  EXPECT_NE(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr(".restoring exists"));
  EXPECT_EQ(Listing(restoring), old_files);
  // The old data directory still serves what was written after the backup.
  std::filesystem::remove_all(env_->data_dir());
  std::filesystem::rename(restoring, env_->data_dir());
  Start();
  absl::StatusOr<v1::Card> card =
      Client("processor")->Detokenize(later[0], "authorization");
  ASSERT_THAT(card, IsOk());
  EXPECT_EQ(card->pan(), later_pans[0]);
}

// A data directory configured (or passed) with a trailing slash is the same
// directory: the restore's copy and the old directory go beside it, not
// into it.
TEST_F(BackupRestoreTest, RestoreIntoADataDirectoryWithATrailingSlash) {
  Start();
  const std::vector<std::string> pans = testing::MakePans(5, 33);
  const std::vector<std::string> tokens = TokenizeAll(pans);
  ASSERT_THAT(Client("admin")->CreateBackup(), IsOk());
  TokenizeAll(testing::MakePans(5, 34));
  Stop();
  ToolRun restore = Cardvaultd(
      absl::StrCat("--restore_backup=1 --data_dir=", env_->data_dir(), "/"));
  ASSERT_EQ(restore.exit_code, 0) << restore.output;
  for (const auto& e : std::filesystem::directory_iterator(env_->data_dir())) {
    EXPECT_FALSE(absl::StartsWith(e.path().filename().string(), "."))
        << e.path();
  }
  int kept = 0;
  for (const auto& e : std::filesystem::directory_iterator(env_->dir())) {
    if (absl::StrContains(e.path().filename().string(),
                          "data.before-restore-")) {
      ++kept;
    }
  }
  EXPECT_EQ(kept, 1);
  Start();
  EXPECT_THAT(Client("processor")->Detokenize(tokens[0], "authorization"),
              IsOk());
  EXPECT_EQ(Events(v1::RESTORE).size(), 1u);
}

TEST_F(BackupRestoreTest, RestoreIsRefusedWhileTheVaultRuns) {
  Start();
  TokenizeAll(testing::MakePans(3, 5));
  ASSERT_THAT(Client("admin")->CreateBackup(), IsOk());
  const auto files = Listing(env_->data_dir());
  ToolRun restore = Cardvaultd("--restore_backup=1");
  EXPECT_NE(restore.exit_code, 0);
  EXPECT_THAT(restore.output, HasSubstr("is in use"));
  EXPECT_THAT(Client("pos")->Tokenize(CardFor("4111111111111111")), IsOk());
  Stop();
  EXPECT_FALSE(std::filesystem::exists(env_->data_dir() + ".restoring"));
  EXPECT_EQ(Listing(env_->data_dir())
                .count(env_->data_dir() + "/" + "RESTORE-PENDING"),
            0u);
  (void)files;
}

TEST_F(BackupRestoreTest, ARestoreMarkerIsRecordedOnceAndOnlyOnItsTrail) {
  Start();
  TokenizeAll(testing::MakePans(4, 8));
  ASSERT_THAT(Client("admin")->CreateBackup(), IsOk());  // 1
  TokenizeAll(testing::MakePans(4, 18));
  ASSERT_THAT(Client("admin")->CreateBackup(), IsOk());  // 2
  Stop();
  ASSERT_EQ(Cardvaultd("--restore_backup=2").exit_code, 0);
  // A second restore before the first was started would lose what the
  // first one recorded as lost: refused.
  ToolRun again = Cardvaultd("--restore_backup=1");
  EXPECT_NE(again.exit_code, 0);
  EXPECT_THAT(again.output, HasSubstr("never started"));
  const std::string marker = env_->data_dir() + "/RESTORE-PENDING";
  const std::string second = testing::ReadFileOrEmpty(marker);
  ASSERT_FALSE(second.empty());
  Start();
  Stop();
  EXPECT_FALSE(std::filesystem::exists(marker));
  // The same marker put back: already recorded, so removed, not recorded
  // twice.
  std::ofstream(marker, std::ios::binary) << second;
  Start();
  EXPECT_EQ(Events(v1::RESTORE).size(), 1u);
  Stop();
  EXPECT_FALSE(std::filesystem::exists(marker));
  // A valid marker of another restore, on a trail that does not end at its
  // backup's head (backup 1 restored, backup 2's marker planted): refused.
  ASSERT_EQ(Cardvaultd("--restore_backup=1").exit_code, 0);
  std::ofstream(marker, std::ios::binary | std::ios::trunc) << second;
  auto server = testing::ServerProcess::Start(env_->config_path(), log_, port_);
  EXPECT_FALSE(server.ok());
  EXPECT_THAT(testing::ReadFileOrEmpty(log_),
              HasSubstr("the trail does not end there"));
}

TEST_F(BackupRestoreTest, OfflineVerifyPrintsJsonAndExitStatus) {
  Start();
  TokenizeAll(testing::MakePans(10, 4));
  ASSERT_THAT(Client("admin")->CreateBackup(), IsOk());
  Stop();
  ToolRun ok = Cardvaultd("--verify_backup=1 --verify_all_records");
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_THAT(ok.output, HasSubstr("\"ok\":true"));
  EXPECT_THAT(ok.output, HasSubstr("\"records_opened\":\"10\""));
  // One flipped byte in a kept file: the checksum check finds it.
  std::string victim;
  for (const auto& e :
       std::filesystem::recursive_directory_iterator(backup_dir())) {
    if (e.is_regular_file() && e.path().extension() == ".sst") {
      victim = e.path().string();
      break;
    }
  }
  ASSERT_FALSE(victim.empty());
  {
    std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(100);
    char c = 0;
    f.read(&c, 1);
    c ^= 0x01;
    f.seekp(100);
    f.write(&c, 1);
  }
  ToolRun bad = Cardvaultd("--verify_backup=1");
  EXPECT_EQ(bad.exit_code, 4) << bad.output;
  EXPECT_THAT(bad.output, HasSubstr("\"ok\":false"));
  ToolRun missing = Cardvaultd("--verify_backup=7");
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.exit_code, 4);
}

TEST_F(BackupRestoreTest, AnEditedManifestDoesNotVerify) {
  Start();
  TokenizeAll(testing::MakePans(5, 6));
  ASSERT_THAT(Client("admin")->CreateBackup(), IsOk());
  Stop();
  // Someone with write access to the backup directory edits the manifest
  // (kept hex-encoded in RocksDB's meta file): one byte of its MAC.
  const std::string meta = backup_dir() + "/meta/1";
  std::string text = testing::ReadFileOrEmpty(meta);
  const size_t at = text.find("metadata ");
  ASSERT_NE(at, std::string::npos);
  const size_t hex_at = at + 9 + 2 * 5;  // the MAC's fifth byte
  text[hex_at] = text[hex_at] == '0' ? '1' : '0';
  std::ofstream(meta, std::ios::trunc) << text;
  ToolRun v = Cardvaultd("--verify_backup=1");
  EXPECT_EQ(v.exit_code, 4) << v.output;
  EXPECT_THAT(v.output, HasSubstr("manifest does not verify"));
  ToolRun restore = Cardvaultd("--restore_backup=1");
  EXPECT_NE(restore.exit_code, 0);
  EXPECT_THAT(restore.output, HasSubstr("does not verify"));
}

TEST_F(BackupRestoreTest, BackupsHoldNoPanOrCvvAsBytesOrThroughRocksDb) {
  Start();
  // Card data in every field a caller controls, a CVV among them.
  const std::string pan = "4111111111111111";
  const std::string name_pan = "5555555555554444";
  auto pos = Client("pos");
  v1::TokenizeRequest request;
  *request.mutable_card() = CardFor(pan);
  request.mutable_card()->set_cardholder_name("HOLDER " + name_pan);
  request.set_cvv("737");
  request.set_idempotency_key("4012888888881881");
  ASSERT_THAT(pos->Tokenize(request), IsOk());
  // An Amex with a 4-digit CID: distinctive enough to search raw bytes for.
  v1::TokenizeRequest amex;
  *amex.mutable_card() = CardFor("371449635398431");
  amex.set_cvv("8642");
  ASSERT_THAT(pos->Tokenize(amex), IsOk());
  (void)pos->Tokenize(CardFor("378282246310005"), "378282246310005");
  (void)Client("processor")->Detokenize("4222222222222", "6011111111111117");
  (void)Client("admin")->VerifyBackup(4111111111, false);
  ASSERT_THAT(Client("admin")->CreateBackup(), IsOk());
  Stop();
  const std::vector<std::string> secrets = {pan,
                                            name_pan,
                                            "4012888888881881",
                                            "378282246310005",
                                            "4222222222222",
                                            "6011111111111117",
                                            "371449635398431",
                                            "8642"};
  for (const std::string& s : secrets) {
    for (const std::string& file : testing::FilesContaining(backup_dir(), s)) {
      // RocksDB keeps the manifest hex-encoded in the meta files, where a
      // 4-digit CVV turns up by chance among its MACs' hex digits: those
      // are searched decoded, the rest of the file as it is.
      std::string text = testing::ReadFileOrEmpty(file);
      const size_t at = text.find("metadata ");
      ASSERT_TRUE(absl::StrContains(file, "/meta/") && at != std::string::npos)
          << s << " in " << file;
      const size_t end = std::min(text.find('\n', at), text.size());
      const std::string hex = text.substr(at + 9, end - at - 9);
      EXPECT_THAT(absl::HexStringToBytes(hex), ::testing::Not(HasSubstr(s)))
          << file;
      text.erase(at, end - at);
      EXPECT_THAT(text, ::testing::Not(HasSubstr(s))) << file;
    }
  }
  // Through RocksDB: every key and value of every table, decompressed.
  auto store = storage::RocksDbBackupStore::Open(
      nullptr, {.directory = backup_dir(), .read_only = true});
  ASSERT_THAT(store, IsOk());
  auto view = (*store)->Open(1);
  ASSERT_THAT(view, IsOk());
  std::string everything;
  for (int t = 0; t < storage::kNumTables; ++t) {
    auto rows =
        (*view)->records().Scan(static_cast<storage::Table>(t), "", 1 << 20);
    ASSERT_THAT(rows, IsOk());
    for (const auto& [k, v] : *rows) absl::StrAppend(&everything, k, v, "|");
  }
  auto keys = (*view)->keys().ListKeys();
  ASSERT_THAT(keys, IsOk());
  for (const auto& [k, v] : *keys) absl::StrAppend(&everything, k, v, "|");
  ASSERT_THAT((*view)->audit().ScanAudit(1,
                                         [&](uint64_t, absl::string_view r) {
                                           absl::StrAppend(&everything, r, "|");
                                           return true;
                                         }),
              IsOk());
  EXPECT_GT(everything.size(), 1000u);
  for (const std::string& s : secrets) {
    EXPECT_FALSE(absl::StrContains(everything, s)) << s;
  }
  // No CVV: the only 3-digit value sent must not sit next to the record's
  // token anywhere (the record has no field for it, the audit no copy).
  EXPECT_FALSE(absl::StrContains(everything, "cvv\":\"737"));
}

TEST_F(BackupRestoreTest, BackupAdminIsAdminOnlyAndRecorded) {
  Start();
  for (absl::string_view who : {"pos", "processor", "auditor"}) {
    EXPECT_THAT(Client(who)->CreateBackup(),
                StatusIs(absl::StatusCode::kPermissionDenied))
        << who;
    EXPECT_THAT(Client(who)->ListBackups(),
                StatusIs(absl::StatusCode::kPermissionDenied));
    EXPECT_THAT(Client(who)->VerifyBackup(1, true),
                StatusIs(absl::StatusCode::kPermissionDenied));
    EXPECT_THAT(Client(who)->DeleteBackup(1),
                StatusIs(absl::StatusCode::kPermissionDenied));
  }
  EXPECT_FALSE(std::filesystem::exists(backup_dir() + "/meta/1"));
  EXPECT_THAT(Client("admin")->VerifyBackup(99, false),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(Client("admin")->DeleteBackup(99),
              StatusIs(absl::StatusCode::kNotFound));
  absl::StatusOr<v1::Backup> b = Client("admin")->CreateBackup();
  ASSERT_THAT(b, IsOk());
  EXPECT_THAT(Client("admin")->DeleteBackup(b->id()), IsOk());
  absl::StatusOr<v1::ListBackupsResponse> all = Client("admin")->ListBackups();
  ASSERT_THAT(all, IsOk());
  EXPECT_EQ(all->backups_size(), 0);
  const std::vector<v1::AuditEvent> admin = Events(v1::BACKUP_ADMIN);
  int denied = 0;
  for (const v1::AuditEvent& e : admin) {
    if (e.status_code() ==
        static_cast<int>(absl::StatusCode::kPermissionDenied)) {
      ++denied;
    }
  }
  EXPECT_GE(denied, 9);
}

TEST_F(BackupRestoreTest, ForgedRestoreMarkerStopsTheStart) {
  Start();
  Stop();
  std::ofstream(env_->data_dir() + "/RESTORE-PENDING")
      << std::string(1, '\x01') << std::string(200, 'A');
  auto server = testing::ServerProcess::Start(env_->config_path(), log_, port_);
  EXPECT_FALSE(server.ok());
  EXPECT_THAT(testing::ReadFileOrEmpty(log_),
              HasSubstr("does not verify under the audit key"));
}

TEST_F(BackupRestoreTest, BackupShippedThroughResticRestoresOnALostDisk) {
  Start();
  const std::vector<std::string> pans = testing::MakePans(30, 12);
  const std::vector<std::string> tokens = TokenizeAll(pans);
  ASSERT_THAT(Client("admin")->CreateBackup(), IsOk());
  Stop();
  // Offsite: the backup directory into a restic repository (encrypted again
  // by restic), as docs/operations.md shows.
  const std::string repo = env_->dir() + "/restic-repo";
  const std::string password = env_->dir() + "/restic.pass";
  std::ofstream(password) << "test passphrase for restic\n";
  const std::string restic = absl::StrCat("RESTIC_REPOSITORY=", repo,
                                          " RESTIC_PASSWORD_FILE=", password,
                                          " restic --no-cache --quiet ");
  ToolRun init = RunTool(restic + "init");
  ASSERT_EQ(init.exit_code, 0) << init.output;
  ToolRun shipped = RunTool(restic + "backup " + backup_dir());
  ASSERT_EQ(shipped.exit_code, 0) << shipped.output;
  // The disk dies: data and local backups are gone.
  std::filesystem::remove_all(env_->data_dir());
  std::filesystem::remove_all(backup_dir());
  const std::string target = env_->dir() + "/from-restic";
  ToolRun fetched =
      RunTool(absl::StrCat(restic, "restore latest --target ", target));
  ASSERT_EQ(fetched.exit_code, 0) << fetched.output;
  std::filesystem::rename(target + backup_dir(), backup_dir());
  ToolRun restore = Cardvaultd("--restore_backup=1");
  ASSERT_EQ(restore.exit_code, 0) << restore.output;
  EXPECT_THAT(restore.output, HasSubstr("records lost: unknown"));
  Start();
  ExpectDetokenizes(tokens, pans);
  std::vector<v1::AuditEvent> restores = Events(v1::RESTORE);
  ASSERT_EQ(restores.size(), 1u);
  EXPECT_EQ(restores[0].restore().lost_through(), 0u);
  EXPECT_THAT(restores[0].detail(), HasSubstr("an unknown range"));
}

TEST_F(BackupRestoreTest, KeepDeletesTheOldestBackups) {
  std::string config = testing::ReadFileOrEmpty(env_->config_path());
  absl::StrReplaceAll({{"keep: 10", "keep: 2"}}, &config);
  std::ofstream(env_->config_path(), std::ios::trunc) << config;
  Start();
  for (int i = 0; i < 3; ++i) {
    TokenizeAll(testing::MakePans(3, 20 + i));
    ASSERT_THAT(Client("admin")->CreateBackup(), IsOk());
  }
  absl::StatusOr<v1::ListBackupsResponse> all = Client("admin")->ListBackups();
  ASSERT_THAT(all, IsOk());
  ASSERT_EQ(all->backups_size(), 2);
  EXPECT_EQ(all->backups(0).id(), 2u);
  EXPECT_EQ(all->backups(1).id(), 3u);
  bool recorded = false;
  for (const v1::AuditEvent& e : Events(v1::BACKUP)) {
    recorded |= absl::StrContains(e.detail(), "deleted backup 1 (backup.keep");
  }
  EXPECT_TRUE(recorded);
}

}  // namespace
}  // namespace cardvault
