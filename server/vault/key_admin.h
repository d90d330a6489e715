// Key administration: the inventory, on-demand rotation, and operations
// under dual control (PCI DSS 3.6.1.1, 3.7.6). Knows nothing of gRPC.
//
// KEK rotation, destroying a key and bulk operations need approvals from M
// distinct identities with the admin role (M = Options::required_approvals,
// default 2): one proposes (its approval), others approve, and the approval
// that reaches M executes the operation. An identity counts once, however often
// it approves; a proposal not executed within Options::proposal_ttl expires
// and can no longer execute. Every call and the execution itself are in the
// audit trail.
//
// Operations live in the store (Table::kShared, one record each; format in
// operation_record.h), not in the process: every node sharing the store
// sees the same operations, an operation proposed on one node may be
// approved on another, and a restart keeps pending proposals. Each change
// of a record is written in the same atomic write as the audit record of the
// call that made it (commit::WritePath, a Mutation under a condition):
//   - Propose: the record, under the condition that its key is absent;
//   - Approve: the record read back from the store with the approval added,
//     under the condition that the record still is exactly what was read; a
//     failed condition (another approval in between, on any node) reads it
//     again, at most kMaxCommitAttempts times. The approval that reaches the
//     required count moves the record to kExecuting under that same
//     condition, so exactly one node, one thread, executes the operation,
//     and then writes its outcome (kExecuted or kFailed) with the execution's
//     audit record.
// Expiry is computed from the stored times by whichever node reads the
// record. A node that stops while executing leaves the operation kExecuting
// (listed so; never run again from the record; propose it again once what
// the node did is checked: the KEK rotation completes or rolls back at
// start, kek_manager.h). Finished and expired operations are removed
// Options::finished_retention after they ended (by the next Propose; the
// trail keeps their history). At most kMaxOperations are held: Propose is
// refused (RESOURCE_EXHAUSTED) beyond it; concurrent proposals on several
// nodes may pass it by a few, and ListOperations then lists the first
// kMaxOperations in id order.
//
// Thread safety: thread-safe. Instances on one store (several nodes, or
// several in one process) coordinate through the store alone.
#ifndef CARDVAULT_SERVER_VAULT_KEY_ADMIN_H_
#define CARDVAULT_SERVER_VAULT_KEY_ADMIN_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/auth/access_policy.h"
#include "server/commit/write_path.h"
#include "server/storage/backup_store.h"
#include "server/storage/token_store.h"
#include "server/vault/backup_manifest.h"
#include "server/vault/key_ring.h"
#include "server/vault/operation_record.h"
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
// Most operations held in the store, and listed.
inline constexpr size_t kMaxOperations = 256;
// Reads and conditional writes of one call before it gives up (ABORTED)
// on concurrent changes of the same record.
inline constexpr int kMaxCommitAttempts = 8;

class KeyAdmin {
 public:
  struct Options {
    // Distinct admin approvals an operation needs, the proposer's
    // included. Default 2; 2..kMaxRequiredApprovals. An operation needs
    // the larger of this and what the node that proposed it required.
    uint32_t required_approvals = 2;
    // How long a proposal may wait for its approvals. Default 24 hours.
    absl::Duration proposal_ttl = absl::Hours(24);
    // How long a finished or expired operation stays listed. Default 30
    // days.
    absl::Duration finished_retention = absl::Hours(24 * 30);
    // This node's name, in the outcome of an operation while it executes
    // here (through util::SafeText, at most audit::kMaxRecordedNodeBytes).
    // Default empty.
    std::string node = "";
    std::function<absl::Time()> now = [] { return absl::Now(); };
  };
  struct Dependencies {
    const KeyRing* keys = nullptr;
    const KekManager* kek = nullptr;
    const Reencryptor* reencryptor = nullptr;
    const Vault* vault = nullptr;  // rotation and destruction, audited
    const auth::PolicyHolder* policy = nullptr;
    const commit::WritePath* audit = nullptr;
    // Reads of the operations (Table::kShared of the store `audit` writes).
    const storage::RecordStore* records = nullptr;
    // What operation records are authenticated under (operation_record.h).
    OperationMac operation_mac;
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
  // Admin. INVALID_ARGUMENT for an unknown kind, a reason over 256 bytes
  // or one that is not printable text or holds a possible card number, or
  // a data key that is not a decrypt-only or retired key;
  // RESOURCE_EXHAUSTED when kMaxOperations are held; UNAVAILABLE (store or
  // audit trail); ABORTED after kMaxCommitAttempts conflicting writes.
  absl::StatusOr<Operation> Propose(const auth::Caller& caller,
                                    OperationKind kind, uint32_t key_version,
                                    absl::string_view reason) const;
  // Admin. NOT_FOUND for an unknown id (or one not of the server's form);
  // FAILED_PRECONDITION for an operation no longer pending (executing,
  // executed, expired) or one this identity already approved; DATA_LOSS
  // for a record that does not decode; UNAVAILABLE; ABORTED after
  // kMaxCommitAttempts concurrent changes of the operation.
  absl::StatusOr<Operation> Approve(const auth::Caller& caller,
                                    absl::string_view operation_id) const;
  // Admin or auditor. At most kMaxOperations, oldest proposal first;
  // records that do not decode are left out (and logged).
  absl::StatusOr<std::vector<Operation>> ListOperations(
      const auth::Caller& caller) const;

 private:
  KeyAdmin(Dependencies deps, Options options)
      : deps_(std::move(deps)), options_(std::move(options)) {}
  // The event of a call by `caller`, with `detail` and the outcome `status`.
  audit::AuditEvent Event(const auth::Caller& caller, absl::string_view rpc,
                          absl::string_view detail,
                          const absl::Status& status) const;
  // Records the call and returns `status` (UNAVAILABLE if the record
  // cannot be written).
  absl::Status Record(const auth::Caller& caller, absl::string_view rpc,
                      absl::string_view detail,
                      const absl::Status& status) const;
  // The caller's identity as an operation record holds it
  // (operation_record.h).
  std::string StoredIdentity(const auth::Caller& caller) const;
  // The (key, value) pairs of the stored operations, at most kMaxOperations.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
  ScanOperations() const;
  // Runs `op`, which this call moved to kExecuting (stored as `executing`),
  // and writes its outcome with the execution's record. The final operation.
  Operation ExecuteAndRecord(Operation op, const std::string& executing) const;
  // Runs an approved operation; what it did.
  absl::StatusOr<std::string> Execute(const Operation& op) const;
  // Ids of the backups whose manifest `holds` says yes to.
  std::vector<uint32_t> BackupsWhere(
      const std::function<bool(const BackupManifest&)>& holds) const;
  // Ids of the backups whose wrapped keys need KEK `label`.
  std::vector<uint32_t> BackupsNeeding(absl::string_view label) const;
  // Ids of the backups that hold data key `version` (not destroyed there).
  std::vector<uint32_t> BackupsHoldingDataKey(uint32_t version) const;

  const Dependencies deps_;
  const Options options_;
};

absl::string_view OperationKindName(OperationKind kind);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_KEY_ADMIN_H_
