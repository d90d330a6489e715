// Key-admin operations under dual control (key_admin.h) as every node
// sharing a store keeps them: one record per operation in
// storage::Table::kShared, so that an operation proposed on one node can be
// approved on another, and a restart keeps what is pending.
//
// Key: kOperationKeyPrefix ("op/") || operation id, the id being "op_" and
// 16 lowercase hex digits drawn at random, drawn again when its digits
// could be a card number (IsOperationId).
//
// Value, byte by byte (integers big-endian; a "string" is a 2-byte length L
// and L bytes):
//   offset  size  field
//   0       1     record format version, kOperationRecordV2 = 0x02 (format
//                 1, the same without the MAC below, is no longer read)
//   1       1     kind: OperationKind, 1..4
//   2       1     stored state: 1 pending, 2 executing, 3 executed,
//                 4 failed (StoredState). kExpired is never stored: a
//                 pending operation is expired once the clock passes
//                 `expires`, on whichever node reads it.
//   3       4     key_version (0 for kinds without one)
//   7       1     required approvals, 2..kMaxRequiredApprovals
//   8       8     proposed, Unix milliseconds
//   16      8     expires, Unix milliseconds
//   24      8     changed: when the state last changed (proposed, execution
//                 begun, outcome recorded), Unix milliseconds
//   32      2+19  string: the operation id (equal to the key's)
//   53      2+R   string: reason, R <= kMaxReasonBytes
//   .       1     A: number of approvers, 1..required approvals
//   .       A x (2+I)  strings: approver identities as stored (below), the
//                 proposer first, pairwise distinct, 1 <= I <=
//                 kMaxStoredIdentityBytes
//   .       2+O   string: outcome, O <= kMaxOutcomeBytes
//   .       4     version of the operation MAC key ("operation-mac/<8 hex>",
//                 wrapped under the KEK like every key, wrapped_keys.h)
//   .       32    HMAC-SHA256 under that key of "cardvault/operation-record"
//                 || every byte before this field
//   nothing after it.
//
// The MAC is what makes dual control hold against whoever can write the
// database: without the key, which only the HSM unwraps, a proposal, an
// approval or a state cannot be forged or altered, only deleted or replaced
// by an earlier record of the same operation (docs/multinode.md says what
// that replay can and cannot do).
//
// What a caller could smuggle card data through, and the rule for each
// field (checked by EncodeOperationRecord, which refuses a record that
// breaks one, and again by DecodeOperationRecord, which refuses to read it):
//   - id: only the server's form, drawn by the server; an id a caller sends
//     to Approve is looked up only once it has that form (IsOperationId).
//   - reason (free text from the admin): printable ASCII holding no possible
//     card number, even one broken up by separators or a few letters
//     (IsRecordableReason); Propose refuses any other with INVALID_ARGUMENT,
//     so the reason is recorded as written, in the trail and here.
//   - approvers: identities a policy bound with the admin role (a caller
//     without that role writes nothing); stored as themselves only when
//     printable and holding no possible card number (util::HoldsCardNumber),
//     else as their audit marker (audit/recorded_value.h), which counts the
//     identity once like the identity itself.
//   - outcome: composed by the server, passed through util::SafeText
//     (kMaxOutcomeBytes) before it is stored; must hold no possible card
//     number and be printable.
// So the record never holds a PAN in clear.
//
// Thread safety: pure functions.
#ifndef CARDVAULT_SERVER_VAULT_OPERATION_RECORD_H_
#define CARDVAULT_SERVER_VAULT_OPERATION_RECORD_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/crypto/hmac_sha256.h"

namespace cardvault::vault {

inline constexpr uint8_t kOperationRecordV2 = 0x02;
inline constexpr char kOperationKeyPrefix[] = "op/";
inline constexpr size_t kOperationIdBytes = 19;
inline constexpr size_t kMaxReasonBytes = 256;
inline constexpr uint32_t kMaxRequiredApprovals = 16;
inline constexpr size_t kMaxStoredIdentityBytes = 255;
inline constexpr size_t kMaxOutcomeBytes = 1024;
inline constexpr size_t kMaxLettersInCardNumber = 3;

enum class OperationKind {
  kDestroyDataKey = 1,
  kReencryptAll = 2,
  kRotateKek = 3,
  kDestroyKek = 4,  // a KEK retained for backups; key_version = generation
};
// kExecuting: the approval that reached the required count moved it there
// (one node, one thread runs it); it stays so if that node stops before the
// outcome is recorded, and is never run again from this record.
enum class OperationState {
  kPending,
  kExecuted,
  kFailed,
  kExpired,
  kExecuting
};

struct Operation {
  std::string id;
  OperationKind kind = OperationKind::kDestroyDataKey;
  uint32_t key_version = 0;
  std::string reason;
  std::string proposer;                // approvers[0]
  std::vector<std::string> approvers;  // distinct, proposer first
  uint32_t required_approvals = 0;
  OperationState state = OperationState::kPending;
  absl::Time proposed;
  absl::Time expires;
  absl::Time changed;  // when `state` last changed
  std::string outcome;
};

// "op_" and 16 lowercase hex digits without a possible card number
// (util::HoldsCardNumber; the server draws again an id that has one): the
// form of the ids the server draws.
bool IsOperationId(absl::string_view id);

// Printable ASCII without a possible card number (util::HoldsCardNumber),
// even one broken up by separators: its digits are taken as one run across
// any characters but letters, and across at most kMaxLettersInCardNumber
// letters ("5555x5555y5555z4444" is one). A reason that may be recorded as
// written.
bool IsRecordableReason(absl::string_view reason);

// Printable ASCII without a possible card number: text (an identity, an
// outcome) that may be stored as itself.
bool IsStorableText(absl::string_view text);

// The key of operation `id` in Table::kShared.
std::string OperationKey(absl::string_view id);

// The key operation records are authenticated under, and its version.
struct OperationMac {
  const crypto::HmacSha256* mac = nullptr;
  uint32_t version = 0;
};

// The record of `op` (its state never kExpired), authenticated under
// `mac`; INVALID_ARGUMENT when a field breaks its rule or bound (file
// comment).
absl::StatusOr<std::string> EncodeOperationRecord(const Operation& op,
                                                  const OperationMac& mac);

// The operation of a record; DATA_LOSS for one that is malformed, breaks a
// rule, names another MAC key version or does not verify under `mac`.
// `proposer` is set from the first approver; `state` is as stored (apply
// expiry with EffectiveState).
absl::StatusOr<Operation> DecodeOperationRecord(absl::string_view value,
                                                const OperationMac& mac);

// `op.state`, or kExpired for a pending operation whose time is up at `now`.
OperationState EffectiveState(const Operation& op, absl::Time now);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_OPERATION_RECORD_H_
