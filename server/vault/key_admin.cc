#include "server/vault/key_admin.h"

#include <algorithm>
#include <array>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/crypto/random.h"
#include "server/util/safe_text.h"
#include "server/vault/audit_event.h"
#include "server/vault/backups.h"

namespace cardvault::vault {

absl::string_view OperationKindName(OperationKind kind) {
  switch (kind) {
    case OperationKind::kDestroyDataKey:
      return "destroy data key";
    case OperationKind::kReencryptAll:
      return "re-encrypt all records";
    case OperationKind::kRotateKek:
      return "rotate KEK";
    case OperationKind::kDestroyKek:
      return "destroy retained KEK";
  }
  return "unknown";
}

namespace {

std::string Describe(const Operation& op) {
  return absl::StrCat("operation ", op.id, " (", OperationKindName(op.kind),
                      op.kind == OperationKind::kDestroyDataKey
                          ? absl::StrCat(" ", DataKeyId(op.key_version))
                      : op.kind == OperationKind::kDestroyKek
                          ? absl::StrCat(" of generation ", op.key_version)
                          : "",
                      "): ", op.approvers.size(), " of ", op.required_approvals,
                      " approvals");
}

// An operation id of the form the server makes: "op_" and 16 hex digits.
bool IsOperationId(absl::string_view id) {
  return id.size() == 19 && absl::StartsWith(id, "op_") &&
         std::all_of(id.begin() + 3, id.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// A reason is recorded as written, so it must be printable text and must not
// hold a card number, even one broken up by separators of any kind.
bool IsRecordableReason(absl::string_view reason) {
  std::string joined;
  for (char c : reason) {
    if (c < 0x20 || c > 0x7e) return false;
    if (absl::ascii_isalnum(static_cast<unsigned char>(c))) joined.push_back(c);
  }
  return !util::HoldsCardNumber(joined);
}

}  // namespace

absl::StatusOr<std::unique_ptr<KeyAdmin>> KeyAdmin::Create(Dependencies deps,
                                                           Options options) {
  if (deps.keys == nullptr || deps.kek == nullptr ||
      deps.reencryptor == nullptr || deps.vault == nullptr ||
      deps.policy == nullptr || deps.audit == nullptr) {
    return absl::InvalidArgumentError("key admin dependencies must be set");
  }
  if (options.required_approvals < 2 ||
      options.proposal_ttl <= absl::ZeroDuration() || !options.now) {
    return absl::InvalidArgumentError(
        "dual control needs at least 2 approvals and a positive TTL");
  }
  return std::unique_ptr<KeyAdmin>(
      new KeyAdmin(std::move(deps), std::move(options)));
}

absl::Status KeyAdmin::Record(const auth::Caller& caller, absl::string_view rpc,
                              absl::string_view detail,
                              const absl::Status& status) const {
  audit::AuditEvent event =
      CallerEvent(caller, *deps_.policy->Current(), deps_.audit->marker(),
                  v1::KEY_ADMIN, rpc, options_.now());
  event.set_detail(std::string(detail));
  SetOutcome(status, &event);
  if (!deps_.audit->Append(std::move(event)).ok()) {
    return absl::UnavailableError("audit trail unavailable");
  }
  return status;
}

absl::StatusOr<std::vector<KeyInfo>> KeyAdmin::ListKeys(
    const auth::Caller& caller) const {
  if (absl::Status s = Record(caller, kListKeysRpc, "key inventory",
                              deps_.policy->Current()->Check(
                                  caller, auth::Permission::kReadKeyInventory));
      !s.ok()) {
    return s;
  }
  absl::StatusOr<KekState> kek = deps_.kek->State();
  if (!kek.ok()) return kek.status();
  std::vector<KeyInfo> keys;
  auto add_kek = [&](const std::string& label, uint32_t generation,
                     KeyState state, absl::Time since) {
    keys.push_back({.id = absl::StrCat("kek/", label),
                    .version = generation,
                    .purpose = "key encryption",
                    .algorithm = "AES-256 in the HSM (sensitive, "
                                 "non-extractable)",
                    .state = state,
                    .created = since});
  };
  // While a rotation runs, both KEKs are live: the new one wraps new keys,
  // the old one still unwraps (rewrapping) or awaits destruction (retiring).
  if (kek->phase == KekPhase::kRewrapping) {
    add_kek(kek->current, kek->generation, KeyState::kDecryptOnly,
            kek->current_since);
    add_kek(kek->other, kek->generation + 1, KeyState::kActive,
            kek->phase_started);
  } else {
    for (const auto& [generation, label] : kek->retained) {
      add_kek(label, generation, KeyState::kDecryptOnly, absl::InfinitePast());
    }
    if (kek->phase == KekPhase::kRetiring) {
      add_kek(kek->other, kek->generation - 1, KeyState::kRetired,
              absl::InfinitePast());
    }
    add_kek(kek->current, kek->generation, KeyState::kActive,
            kek->current_since);
  }
  for (const KeyInfo& k : deps_.other_keys) keys.push_back(k);
  for (KeyInfo& k : deps_.keys->Inventory()) keys.push_back(std::move(k));
  return keys;
}

absl::StatusOr<uint32_t> KeyAdmin::RotateDataKey(
    const auth::Caller& caller) const {
  absl::Status allowed =
      deps_.policy->Current()->Check(caller, auth::Permission::kAdministerKeys);
  if (!allowed.ok()) {
    return Record(caller, kRotateDataKeyRpc, "rotate data key", allowed);
  }
  absl::StatusOr<uint32_t> rotated = deps_.vault->RotateDataKey();
  absl::Status recorded = Record(
      caller, kRotateDataKeyRpc,
      rotated.ok() ? absl::StrCat("rotated data key: ", DataKeyId(*rotated),
                                  " is primary")
                   : "rotate data key",
      rotated.status());
  if (!recorded.ok()) return recorded;
  return rotated;
}

void KeyAdmin::ExpireLocked(absl::Time now) const {
  for (auto& [id, op] : operations_) {
    if (op.state == OperationState::kPending && now >= op.expires) {
      op.state = OperationState::kExpired;
      op.outcome = "expired before it had its approvals";
    }
  }
}

absl::StatusOr<Operation> KeyAdmin::Propose(const auth::Caller& caller,
                                            OperationKind kind,
                                            uint32_t key_version,
                                            absl::string_view reason) const {
  absl::Status allowed =
      deps_.policy->Current()->Check(caller, auth::Permission::kAdministerKeys);
  if (allowed.ok() && kind != OperationKind::kDestroyDataKey &&
      kind != OperationKind::kReencryptAll &&
      kind != OperationKind::kRotateKek && kind != OperationKind::kDestroyKek) {
    allowed = absl::InvalidArgumentError("unknown operation kind");
  }
  if (allowed.ok() && reason.size() > kMaxReasonBytes) {
    allowed = absl::InvalidArgumentError("reason is over 256 bytes");
  }
  if (allowed.ok() && !IsRecordableReason(reason)) {
    allowed = absl::InvalidArgumentError(
        "reason must be printable ASCII text without card numbers");
  }
  if (allowed.ok() && kind == OperationKind::kDestroyDataKey) {
    const std::vector<uint32_t> old = deps_.keys->DecryptOnlyVersions();
    if (std::find(old.begin(), old.end(), key_version) == old.end()) {
      allowed = absl::InvalidArgumentError(
          "key_version is not a decrypt-only or retired data key");
    }
  }
  std::string consequence;
  if (allowed.ok() && kind == OperationKind::kDestroyKek) {
    absl::StatusOr<KekState> state = deps_.kek->State();
    const std::string* label = nullptr;
    if (state.ok()) {
      for (const auto& [generation, l] : state->retained) {
        if (generation == key_version) label = &l;
      }
    }
    if (label == nullptr) {
      allowed = absl::InvalidArgumentError(
          "key_version is not the generation of a retained KEK");
    } else {
      const std::vector<uint32_t> lost = BackupsNeeding(*label);
      consequence = lost.empty()
                        ? "; no backup kept needs it"
                        : absl::StrCat("; backups it makes unreadable: ",
                                       absl::StrJoin(lost, ", "));
    }
  }
  if (!allowed.ok()) {
    return Record(caller, kProposeOperationRpc, "propose operation", allowed);
  }
  std::array<uint8_t, 8> random;
  if (absl::Status s = crypto::FillRandom(absl::MakeSpan(random)); !s.ok()) {
    return Record(caller, kProposeOperationRpc, "propose operation", s);
  }
  Operation op;
  op.id = absl::StrCat(
      "op_", absl::BytesToHexString(absl::string_view(
                 reinterpret_cast<const char*>(random.data()), random.size())));
  op.kind = kind;
  op.key_version = kind == OperationKind::kDestroyDataKey ||
                           kind == OperationKind::kDestroyKek
                       ? key_version
                       : 0;
  op.reason = std::string(reason);
  op.proposer = caller.identity;
  op.approvers = {caller.identity};
  op.required_approvals = options_.required_approvals;
  op.proposed = options_.now();
  op.expires = op.proposed + options_.proposal_ttl;
  if (absl::Status s =
          Record(caller, kProposeOperationRpc,
                 absl::StrCat("proposed ", Describe(op), consequence,
                              "; reason: ", op.reason),
                 absl::OkStatus());
      !s.ok()) {
    return s;
  }
  absl::MutexLock lock(&mu_);
  operations_.emplace(op.id, op);
  return op;
}

absl::StatusOr<Operation> KeyAdmin::Approve(
    const auth::Caller& caller, absl::string_view operation_id) const {
  absl::Status allowed =
      deps_.policy->Current()->Check(caller, auth::Permission::kAdministerKeys);
  const std::string what = absl::StrCat(
      "approve operation ", deps_.audit->marker().Recorded(
                                operation_id, IsOperationId(operation_id)));
  if (!allowed.ok()) {
    return Record(caller, kApproveOperationRpc, what, allowed);
  }
  Operation op;
  bool execute = false;
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    ExpireLocked(options_.now());
    auto it = operations_.find(operation_id);
    if (it == operations_.end()) {
      refused = absl::NotFoundError("no such operation");
    } else if (it->second.state != OperationState::kPending) {
      refused = absl::FailedPreconditionError(
          it->second.state == OperationState::kExpired
              ? "operation expired"
              : "operation is no longer pending");
    } else if (std::find(it->second.approvers.begin(),
                         it->second.approvers.end(),
                         caller.identity) != it->second.approvers.end()) {
      refused = absl::FailedPreconditionError(
          "this identity already approved the operation; approvals must "
          "come from distinct admins");
    } else {
      it->second.approvers.push_back(caller.identity);
      execute = it->second.approvers.size() >= it->second.required_approvals;
      op = it->second;
    }
  }
  if (!refused.ok()) {
    return Record(caller, kApproveOperationRpc, what, refused);
  }
  if (absl::Status s =
          Record(caller, kApproveOperationRpc,
                 absl::StrCat("approved ", Describe(op)), absl::OkStatus());
      !s.ok()) {
    return s;
  }
  if (!execute) return op;
  const absl::StatusOr<std::string> outcome = Execute(op);
  absl::MutexLock lock(&mu_);
  Operation& stored = operations_.at(op.id);
  stored.state =
      outcome.ok() ? OperationState::kExecuted : OperationState::kFailed;
  stored.outcome =
      outcome.ok() ? *outcome : std::string(outcome.status().message());
  return stored;
}

absl::StatusOr<std::string> KeyAdmin::Execute(const Operation& op) const {
  absl::StatusOr<std::string> outcome;
  switch (op.kind) {
    case OperationKind::kDestroyDataKey:
      if (absl::Status s = deps_.vault->DestroyDataKey(op.key_version);
          !s.ok()) {
        outcome = s;
      } else {
        // Backups carry their own wrapped copy: crypto-shredding completes
        // only once they are deleted.
        const std::vector<uint32_t> holding =
            BackupsHoldingDataKey(op.key_version);
        outcome = absl::StrCat(
            "destroyed ", DataKeyId(op.key_version),
            holding.empty()
                ? std::string()
                : absl::StrCat("; backups that still hold it (their records "
                               "stay readable until they are deleted): ",
                               absl::StrJoin(holding, ", ")));
      }
      break;
    case OperationKind::kReencryptAll:
      if (absl::StatusOr<Reencryptor::PassResult> pass =
              deps_.reencryptor->RunPass();
          !pass.ok()) {
        outcome = pass.status();
      } else {
        outcome = absl::StrCat("re-encrypted ", pass->reencrypted, " records");
      }
      break;
    case OperationKind::kRotateKek:
      if (absl::StatusOr<std::string> label = deps_.kek->Rotate();
          !label.ok()) {
        outcome = label.status();
      } else {
        outcome = absl::StrCat(
            "every key rewrapped in the HSM under the new KEK \"", *label,
            deps_.backups != nullptr
                ? "\"; the old KEK retained in the HSM, decrypt-only, for "
                  "backups"
                : "\"; the old KEK destroyed in the HSM");
      }
      break;
    case OperationKind::kDestroyKek:
      if (absl::StatusOr<std::string> label =
              deps_.kek->DestroyRetained(op.key_version);
          !label.ok()) {
        outcome = label.status();
      } else {
        const std::vector<uint32_t> lost = BackupsNeeding(*label);
        outcome = absl::StrCat(
            "destroyed retained KEK \"", *label, "\" in the HSM",
            lost.empty() ? std::string("; no backup kept needed it")
                         : absl::StrCat("; backups now unreadable: ",
                                        absl::StrJoin(lost, ", ")));
      }
      break;
  }
  auth::Caller executor;
  executor.identity = std::string(audit::kServerIdentity);
  (void)Record(executor, "",
               absl::StrCat("executed ", Describe(op), ", approved by ",
                            absl::StrJoin(op.approvers, ", "),
                            outcome.ok() ? absl::StrCat(": ", *outcome) : ""),
               outcome.status());
  return outcome;
}

std::vector<uint32_t> KeyAdmin::BackupsWhere(
    const std::function<bool(const BackupManifest&)>& holds) const {
  std::vector<uint32_t> out;
  if (deps_.backups == nullptr) return out;
  absl::StatusOr<std::vector<BackupSummary>> all = ListBackups(*deps_.backups);
  if (!all.ok()) return out;
  for (const BackupSummary& b : *all) {
    if (holds(b.manifest)) out.push_back(b.stored.id);
  }
  return out;
}

std::vector<uint32_t> KeyAdmin::BackupsNeeding(absl::string_view label) const {
  return BackupsWhere([&](const BackupManifest& m) {
    return std::any_of(m.keks().begin(), m.keks().end(),
                       [&](const auto& k) { return k.label() == label; });
  });
}

std::vector<uint32_t> KeyAdmin::BackupsHoldingDataKey(uint32_t version) const {
  return BackupsWhere([&](const BackupManifest& m) {
    return std::find(m.data_key_versions().begin(), m.data_key_versions().end(),
                     version) != m.data_key_versions().end();
  });
}

absl::StatusOr<std::vector<Operation>> KeyAdmin::ListOperations(
    const auth::Caller& caller) const {
  if (absl::Status s = Record(caller, kListOperationsRpc, "list operations",
                              deps_.policy->Current()->Check(
                                  caller, auth::Permission::kReadKeyInventory));
      !s.ok()) {
    return s;
  }
  absl::MutexLock lock(&mu_);
  ExpireLocked(options_.now());
  std::vector<Operation> out;
  for (const auto& [id, op] : operations_) out.push_back(op);
  std::sort(out.begin(), out.end(), [](const Operation& a, const Operation& b) {
    return a.proposed < b.proposed;
  });
  return out;
}

}  // namespace cardvault::vault
