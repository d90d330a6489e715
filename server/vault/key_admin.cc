#include "server/vault/key_admin.h"

#include <algorithm>
#include <array>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/crypto/random.h"
#include "server/util/log.h"
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

// A time as the records hold it (whole milliseconds), so that what Propose
// returns is what a read of the record returns.
absl::Time StoredTime(absl::Time t) {
  return absl::FromUnixMillis(absl::ToUnixMillis(t));
}

// Draws of an operation id before giving up (each is refused with
// probability below 1/100).
constexpr int kMaxIdDraws = 16;

}  // namespace

absl::StatusOr<std::unique_ptr<KeyAdmin>> KeyAdmin::Create(Dependencies deps,
                                                           Options options) {
  if (deps.keys == nullptr || deps.kek == nullptr ||
      deps.reencryptor == nullptr || deps.vault == nullptr ||
      deps.policy == nullptr || deps.audit == nullptr ||
      deps.records == nullptr || deps.operation_mac.mac == nullptr) {
    return absl::InvalidArgumentError("key admin dependencies must be set");
  }
  if (options.required_approvals < 2 ||
      options.required_approvals > kMaxRequiredApprovals ||
      options.proposal_ttl <= absl::ZeroDuration() ||
      options.finished_retention < absl::ZeroDuration() || !options.now) {
    return absl::InvalidArgumentError(
        "dual control needs 2 to 16 approvals and a positive TTL");
  }
  return std::unique_ptr<KeyAdmin>(
      new KeyAdmin(std::move(deps), std::move(options)));
}

audit::AuditEvent KeyAdmin::Event(const auth::Caller& caller,
                                  absl::string_view rpc,
                                  absl::string_view detail,
                                  const absl::Status& status) const {
  audit::AuditEvent event =
      CallerEvent(caller, *deps_.policy->Current(), deps_.audit->marker(),
                  v1::KEY_ADMIN, rpc, options_.now());
  event.set_detail(std::string(detail));
  SetOutcome(status, &event);
  return event;
}

absl::Status KeyAdmin::Record(const auth::Caller& caller, absl::string_view rpc,
                              absl::string_view detail,
                              const absl::Status& status) const {
  if (!deps_.audit->Append(Event(caller, rpc, detail, status)).ok()) {
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

std::string KeyAdmin::StoredIdentity(const auth::Caller& caller) const {
  if (!caller.identity.empty() &&
      caller.identity.size() <= kMaxStoredIdentityBytes &&
      IsStorableText(caller.identity)) {
    return caller.identity;
  }
  return deps_.audit->marker().Mark(caller.identity);
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
KeyAdmin::ScanOperations() const {
  // Every key with the prefix sorts after the prefix itself and before any
  // key after it without the prefix: one scan from it finds them all.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> scanned =
      deps_.records->Scan(storage::Table::kShared, kOperationKeyPrefix,
                          kMaxOperations);
  if (!scanned.ok()) return absl::UnavailableError("storage unavailable");
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& kv : *scanned) {
    if (!absl::StartsWith(kv.first, kOperationKeyPrefix)) break;
    out.push_back(std::move(kv));
  }
  return out;
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
  const std::string refused_what = "propose operation";
  for (int attempt = 0; attempt < kMaxCommitAttempts; ++attempt) {
    const absl::Time now = StoredTime(options_.now());
    absl::StatusOr<std::vector<std::pair<std::string, std::string>>> held =
        ScanOperations();
    if (!held.ok()) {
      return Record(caller, kProposeOperationRpc, refused_what, held.status());
    }
    // Operations finished (or expired) longer than finished_retention ago
    // are forgotten in the same write, each only if still as read.
    commit::Mutation mutation;
    mutation.conditions.push_back({storage::Table::kShared, "", std::nullopt});
    size_t forgotten = 0;
    for (const auto& [key, value] : *held) {
      absl::StatusOr<Operation> old =
          DecodeOperationRecord(value, deps_.operation_mac);
      if (!old.ok()) continue;
      const OperationState state = EffectiveState(*old, now);
      const absl::Time ended =
          state == OperationState::kExpired ? old->expires : old->changed;
      if ((state == OperationState::kExpired ||
           state == OperationState::kExecuted ||
           state == OperationState::kFailed) &&
          now - ended >= options_.finished_retention) {
        mutation.conditions.push_back({storage::Table::kShared, key, value});
        mutation.writes.push_back({storage::Table::kShared, key, std::nullopt});
        ++forgotten;
      }
    }
    if (held->size() - forgotten >= kMaxOperations) {
      return Record(caller, kProposeOperationRpc, refused_what,
                    absl::ResourceExhaustedError(absl::StrCat(
                        kMaxOperations,
                        " operations are held; wait until pending ones "
                        "execute or expire")));
    }
    // Drawn again in the rare case that the digits look like a card number
    // (IsOperationId), so that no id is ever masked or refused as one.
    Operation op;
    for (int draw = 0; draw < kMaxIdDraws && !IsOperationId(op.id); ++draw) {
      std::array<uint8_t, 8> random;
      if (absl::Status s = crypto::FillRandom(absl::MakeSpan(random));
          !s.ok()) {
        return Record(caller, kProposeOperationRpc, refused_what, s);
      }
      op.id = absl::StrCat(
          "op_",
          absl::BytesToHexString(absl::string_view(
              reinterpret_cast<const char*>(random.data()), random.size())));
    }
    if (!IsOperationId(op.id)) {
      return Record(caller, kProposeOperationRpc, refused_what,
                    absl::InternalError("no operation id could be drawn"));
    }
    op.kind = kind;
    op.key_version = kind == OperationKind::kDestroyDataKey ||
                             kind == OperationKind::kDestroyKek
                         ? key_version
                         : 0;
    op.reason = std::string(reason);
    op.proposer = StoredIdentity(caller);
    op.approvers = {op.proposer};
    op.required_approvals = options_.required_approvals;
    op.proposed = now;
    op.expires = StoredTime(now + options_.proposal_ttl);
    op.changed = now;
    absl::StatusOr<std::string> record =
        EncodeOperationRecord(op, deps_.operation_mac);
    if (!record.ok()) {
      return Record(caller, kProposeOperationRpc, refused_what,
                    absl::InternalError("operation record not encodable"));
    }
    const std::string key = OperationKey(op.id);
    mutation.conditions[0].key = key;
    mutation.writes.push_back({storage::Table::kShared, key, *record});
    absl::Status written = deps_.audit->Append(
        Event(
            caller, kProposeOperationRpc,
            absl::StrCat(
                "proposed ", Describe(op), consequence, "; reason: ", op.reason,
                forgotten == 0
                    ? ""
                    : absl::StrCat(
                          "; forgot ", forgotten, " operations finished over ",
                          absl::FormatDuration(options_.finished_retention),
                          " ago")),
            absl::OkStatus()),
        std::move(mutation));
    // A failed condition: an id drawn twice, or an operation forgotten or
    // changed by another call meanwhile. Read again.
    if (absl::IsAborted(written)) continue;
    if (!written.ok()) return absl::UnavailableError("audit trail unavailable");
    return op;
  }
  return Record(caller, kProposeOperationRpc, refused_what,
                absl::AbortedError("conflicting concurrent proposals; retry"));
}

absl::StatusOr<Operation> KeyAdmin::Approve(
    const auth::Caller& caller, absl::string_view operation_id) const {
  absl::Status allowed =
      deps_.policy->Current()->Check(caller, auth::Permission::kAdministerKeys);
  const bool well_formed = IsOperationId(operation_id);
  const std::string what =
      absl::StrCat("approve operation ",
                   deps_.audit->marker().Recorded(operation_id, well_formed));
  if (!allowed.ok()) {
    return Record(caller, kApproveOperationRpc, what, allowed);
  }
  if (!well_formed) {
    return Record(caller, kApproveOperationRpc, what,
                  absl::NotFoundError("no such operation"));
  }
  const std::string key = OperationKey(operation_id);
  const std::string approver = StoredIdentity(caller);
  for (int attempt = 0; attempt < kMaxCommitAttempts; ++attempt) {
    absl::StatusOr<std::string> value =
        deps_.records->Get(storage::Table::kShared, key);
    if (absl::IsNotFound(value.status())) {
      return Record(caller, kApproveOperationRpc, what,
                    absl::NotFoundError("no such operation"));
    }
    if (!value.ok()) {
      return Record(caller, kApproveOperationRpc, what,
                    absl::UnavailableError("storage unavailable"));
    }
    absl::StatusOr<Operation> op =
        DecodeOperationRecord(*value, deps_.operation_mac);
    if (!op.ok() || op->id != operation_id) {
      util::LogError(absl::StrCat("ALERT operation record ", operation_id,
                                  " does not decode"));
      return Record(caller, kApproveOperationRpc, what,
                    absl::DataLossError("operation record is malformed"));
    }
    const absl::Time now = StoredTime(options_.now());
    const OperationState state = EffectiveState(*op, now);
    if (state != OperationState::kPending) {
      return Record(caller, kApproveOperationRpc, what,
                    absl::FailedPreconditionError(
                        state == OperationState::kExpired
                            ? "operation expired"
                            : "operation is no longer pending"));
    }
    if (std::find(op->approvers.begin(), op->approvers.end(), approver) !=
        op->approvers.end()) {
      return Record(
          caller, kApproveOperationRpc, what,
          absl::FailedPreconditionError(
              "this identity already approved the operation; approvals must "
              "come from distinct admins"));
    }
    op->approvers.push_back(approver);
    op->required_approvals =
        std::max(op->required_approvals, options_.required_approvals);
    const bool execute = op->approvers.size() >= op->required_approvals;
    if (execute) {
      op->state = OperationState::kExecuting;
      op->changed = now;
      op->outcome = util::SafeText(
          absl::StrCat(
              "executing",
              options_.node.empty()
                  ? ""
                  : absl::StrCat(" on node ",
                                 util::SafeText(options_.node,
                                                audit::kMaxRecordedNodeBytes)),
              " since ",
              absl::FormatTime(absl::RFC3339_sec, now, absl::UTCTimeZone())),
          kMaxOutcomeBytes);
    }
    absl::StatusOr<std::string> updated =
        EncodeOperationRecord(*op, deps_.operation_mac);
    if (!updated.ok()) {
      return Record(caller, kApproveOperationRpc, what,
                    absl::InternalError("operation record not encodable"));
    }
    commit::Mutation mutation;
    mutation.conditions.push_back({storage::Table::kShared, key, *value});
    mutation.writes.push_back({storage::Table::kShared, key, *updated});
    absl::Status written =
        deps_.audit->Append(Event(caller, kApproveOperationRpc,
                                  absl::StrCat("approved ", Describe(*op),
                                               execute ? "; executing it" : ""),
                                  absl::OkStatus()),
                            std::move(mutation));
    // Another approval (on any node) changed the record since it was read.
    if (absl::IsAborted(written)) continue;
    if (!written.ok()) return absl::UnavailableError("audit trail unavailable");
    if (!execute) return *std::move(op);
    return ExecuteAndRecord(*std::move(op), *updated);
  }
  return Record(caller, kApproveOperationRpc, what,
                absl::AbortedError("conflicting concurrent approvals; retry"));
}

Operation KeyAdmin::ExecuteAndRecord(Operation op,
                                     const std::string& executing) const {
  const absl::StatusOr<std::string> outcome = Execute(op);
  op.state = outcome.ok() ? OperationState::kExecuted : OperationState::kFailed;
  op.changed = StoredTime(options_.now());
  op.outcome = util::SafeText(
      outcome.ok() ? *outcome : outcome.status().message(), kMaxOutcomeBytes);
  auth::Caller executor;
  executor.identity = std::string(audit::kServerIdentity);
  audit::AuditEvent event =
      Event(executor, "",
            absl::StrCat("executed ", Describe(op), ", approved by ",
                         absl::StrJoin(op.approvers, ", "),
                         outcome.ok() ? absl::StrCat(": ", *outcome) : ""),
            outcome.status());
  absl::StatusOr<std::string> done =
      EncodeOperationRecord(op, deps_.operation_mac);
  commit::Mutation mutation;
  if (done.ok()) {
    const std::string key = OperationKey(op.id);
    mutation.conditions.push_back({storage::Table::kShared, key, executing});
    mutation.writes.push_back({storage::Table::kShared, key, *done});
  }
  absl::Status written = deps_.audit->Append(event, std::move(mutation));
  const bool stored = done.ok() && written.ok();
  if (absl::IsAborted(written)) {
    // Only this call moves the record out of kExecuting: not expected. The
    // execution is recorded all the same.
    written = deps_.audit->Append(std::move(event));
  }
  if (!stored) {
    util::LogError(absl::StrCat(
        "ALERT the outcome of operation ", op.id,
        " is not recorded in the store (it stays listed as executing)",
        written.ok() ? "" : " nor in the audit trail"));
  }
  return op;
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
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> held =
      ScanOperations();
  if (!held.ok()) return held.status();
  const absl::Time now = options_.now();
  std::vector<Operation> out;
  for (const auto& [key, value] : *held) {
    absl::StatusOr<Operation> op =
        DecodeOperationRecord(value, deps_.operation_mac);
    if (!op.ok() || OperationKey(op->id) != key) {
      util::LogError(
          absl::StrCat("ALERT an operation record does not decode (key ",
                       util::SafeText(key, audit::kMaxMarkerBytes), ")"));
      continue;
    }
    op->state = EffectiveState(*op, now);
    if (op->state == OperationState::kExpired) {
      op->outcome = "expired before it had its approvals";
    }
    out.push_back(*std::move(op));
  }
  std::sort(out.begin(), out.end(), [](const Operation& a, const Operation& b) {
    return a.proposed != b.proposed ? a.proposed < b.proposed : a.id < b.id;
  });
  return out;
}

}  // namespace cardvault::vault
