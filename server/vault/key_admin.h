// Key administration: the inventory, on-demand rotation, and operations
// under dual control (PCI DSS 3.6.1.1, 3.7.6). Knows nothing of gRPC.
//
// KEK rotation, destroying a key and bulk operations need approvals from M
// distinct identities with the admin role (M = Options::required_approvals,
// default 2): one proposes (its approval), others approve, and the approval
// that reaches M executes the operation. An identity counts once, however often
// it approves; a proposal not executed within Options::proposal_ttl expires
// and can no longer execute. Every call and the execution itself are in the
// audit trail. Pending proposals live in memory: a restart cancels them,
// which errs on the safe side.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_VAULT_KEY_ADMIN_H_
#define CARDVAULT_SERVER_VAULT_KEY_ADMIN_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/commit/write_path.h"
#include "server/auth/access_policy.h"
#include "server/storage/backup_store.h"
#include "server/vault/backup_manifest.h"
#include "server/vault/key_ring.h"
#include "server/vault/reencryptor.h"
#include "server/vault/vault.h"

namespace cardvault::vault {

inline constexpr char kListKeysRpc[] = "/cardvault.v1.KeyAdmin/ListKeys";
inline constexpr char kRotateDataKeyRpc[] =
    "/cardvault.v1.KeyAdmin/RotateDataKey";
inline constexpr char kProposeOperationRpc[] =
    "/cardvault.v1.KeyAdmin/ProposeOperation";
inline constexpr char kApproveOperationRpc[] =
    "/cardvault.v1.KeyAdmin/ApproveOperation";
inline constexpr char kListOperationsRpc[] =
    "/cardvault.v1.KeyAdmin/ListOperations";
inline constexpr size_t kMaxReasonBytes = 256;

enum class OperationKind {
  kDestroyDataKey = 1,
  kReencryptAll = 2,
  kRotateKek = 3,
  kDestroyKek = 4,  // a KEK retained for backups; key_version = generation
};
enum class OperationState { kPending, kExecuted, kFailed, kExpired };

struct Operation {
  std::string id;
  OperationKind kind = OperationKind::kDestroyDataKey;
  uint32_t key_version = 0;
  std::string reason;
  std::string proposer;
  std::vector<std::string> approvers;  // distinct, proposer first
  uint32_t required_approvals = 0;
  OperationState state = OperationState::kPending;
  absl::Time proposed;
  absl::Time expires;
  std::string outcome;
};

class KeyAdmin {
 public:
  struct Options {
    // Distinct admin approvals an operation needs, the proposer's
    // included. Default 2; at least 2.
    uint32_t required_approvals = 2;
    // How long a proposal may wait for its approvals. Default 24 hours.
    absl::Duration proposal_ttl = absl::Hours(24);
    std::function<absl::Time()> now = [] { return absl::Now(); };
  };
  struct Dependencies {
    const KeyRing* keys = nullptr;
    const KekManager* kek = nullptr;
    const Reencryptor* reencryptor = nullptr;
    const Vault* vault = nullptr;  // rotation and destruction, audited
    const auth::PolicyHolder* policy = nullptr;
    const commit::WritePath* audit = nullptr;
    // Keys outside the data-key ring and the KEKs (HMAC keys), for the
    // inventory.
    std::vector<KeyInfo> other_keys;
    // The backups kept (null: backups off), to say which a KEK's
    // destruction makes unreadable.
    const storage::BackupStore* backups = nullptr;
  };

  static absl::StatusOr<std::unique_ptr<KeyAdmin>> Create(Dependencies deps,
                                                          Options options);

  // Admin or auditor. Every key, never key material.
  absl::StatusOr<std::vector<KeyInfo>> ListKeys(
      const auth::Caller& caller) const;
  // Admin. The new primary data key's version.
  absl::StatusOr<uint32_t> RotateDataKey(const auth::Caller& caller) const;
  // Admin. INVALID_ARGUMENT for an unknown kind, a reason over 256 bytes,
  // or a data key that is not a decrypt-only or retired key.
  absl::StatusOr<Operation> Propose(const auth::Caller& caller,
                                    OperationKind kind, uint32_t key_version,
                                    absl::string_view reason) const;
  // Admin. NOT_FOUND for an unknown id; FAILED_PRECONDITION for an
  // operation no longer pending (executed, expired) or one this identity
  // already approved.
  absl::StatusOr<Operation> Approve(const auth::Caller& caller,
                                    absl::string_view operation_id) const;
  // Admin or auditor.
  absl::StatusOr<std::vector<Operation>> ListOperations(
      const auth::Caller& caller) const;

 private:
  KeyAdmin(Dependencies deps, Options options)
      : deps_(std::move(deps)), options_(std::move(options)) {}
  // Records the call and returns `status` (UNAVAILABLE if the record
  // cannot be written).
  absl::Status Record(const auth::Caller& caller, absl::string_view rpc,
                      absl::string_view detail,
                      const absl::Status& status) const;
  // Runs an approved operation; what it did.
  absl::StatusOr<std::string> Execute(const Operation& op) const;
  void ExpireLocked(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ids of the backups whose manifest `holds` says yes to.
  std::vector<uint32_t> BackupsWhere(
      const std::function<bool(const BackupManifest&)>& holds) const;
  // Ids of the backups whose wrapped keys need KEK `label`.
  std::vector<uint32_t> BackupsNeeding(absl::string_view label) const;
  // Ids of the backups that hold data key `version` (not destroyed there).
  std::vector<uint32_t> BackupsHoldingDataKey(uint32_t version) const;

  const Dependencies deps_;
  const Options options_;
  mutable absl::Mutex mu_;
  mutable std::map<std::string, Operation, std::less<>> operations_
      ABSL_GUARDED_BY(mu_);
};

absl::string_view OperationKindName(OperationKind kind);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_KEY_ADMIN_H_
