#include "server/vault/kek_manager.h"

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "server/util/big_endian.h"
#include "server/util/log.h"
#include "server/vault/wrapped_keys.h"

namespace cardvault::vault {
namespace {

constexpr size_t kFixedBytes = 1 + 4 + 1 + 8 + 8 + 1 + 1;
constexpr size_t kGenerationSuffixBytes = 9;  // "/" and 8 hex digits
// Attempts of the rewrap write when keys change under it (a data key made
// or destroyed meanwhile).
constexpr int kRewrapAttempts = 5;

absl::Time Millis(absl::Time t) {
  return absl::FromUnixMillis(absl::ToUnixMillis(t));
}

}  // namespace

std::string EncodeKekState(const KekState& state) {
  std::string out(
      1, static_cast<char>(state.retained.empty() ? kKekStateFormatV1
                                                  : kKekStateFormatV2));
  util::AppendBigEndian32(state.generation, &out);
  out.push_back(static_cast<char>(state.phase));
  util::AppendUnixMillis(state.current_since, &out);
  util::AppendUnixMillis(state.phase == KekPhase::kSteady ? absl::UnixEpoch()
                                                          : state.phase_started,
                         &out);
  out.push_back(static_cast<char>(state.current.size()));
  out.append(state.current);
  out.push_back(static_cast<char>(state.other.size()));
  out.append(state.other);
  if (!state.retained.empty()) {
    out.push_back(static_cast<char>(state.retained.size()));
    for (const auto& [generation, label] : state.retained) {
      util::AppendBigEndian32(generation, &out);
      out.push_back(static_cast<char>(label.size()));
      out.append(label);
    }
  }
  return out;
}

absl::StatusOr<KekState> DecodeKekState(absl::string_view record) {
  auto bad = [](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("KEK state record: ", why));
  };
  if (record.size() < kFixedBytes ||
      (static_cast<uint8_t>(record[0]) != kKekStateFormatV1 &&
       static_cast<uint8_t>(record[0]) != kKekStateFormatV2)) {
    return bad("unknown format");
  }
  const bool v2 = static_cast<uint8_t>(record[0]) == kKekStateFormatV2;
  KekState state;
  state.generation = util::ReadBigEndian32(record.substr(1, 4));
  const uint8_t phase = static_cast<uint8_t>(record[5]);
  if (phase > static_cast<uint8_t>(KekPhase::kRetiring)) {
    return bad("unknown phase");
  }
  state.phase = static_cast<KekPhase>(phase);
  state.current_since =
      util::ReadUnixMillis(record.substr(6, 8), absl::UnixEpoch());
  state.phase_started =
      util::ReadUnixMillis(record.substr(14, 8), absl::UnixEpoch());
  const size_t current_len = static_cast<uint8_t>(record[22]);
  if (current_len == 0 || current_len > kMaxKekLabelBytes ||
      record.size() < kFixedBytes + current_len) {
    return bad("bad current label");
  }
  state.current = std::string(record.substr(23, current_len));
  const size_t other_len = static_cast<uint8_t>(record[23 + current_len]);
  const size_t v1_size = kFixedBytes + current_len + other_len;
  if (other_len > kMaxKekLabelBytes ||
      (v2 ? record.size() <= v1_size : record.size() != v1_size) ||
      (other_len == 0) != (state.phase == KekPhase::kSteady) ||
      state.generation == 0) {
    return bad("bad lengths");
  }
  state.other = std::string(record.substr(24 + current_len, other_len));
  if (v2) {
    size_t at = v1_size;
    const size_t count = static_cast<uint8_t>(record[at++]);
    if (count == 0 || count > kMaxRetainedKeks) return bad("bad retained");
    for (size_t i = 0; i < count; ++i) {
      if (record.size() < at + 5) return bad("bad retained");
      const uint32_t generation = util::ReadBigEndian32(record.substr(at, 4));
      const size_t len = static_cast<uint8_t>(record[at + 4]);
      at += 5;
      if (len == 0 || len > kMaxKekLabelBytes || record.size() < at + len) {
        return bad("bad retained");
      }
      state.retained.emplace_back(generation,
                                  std::string(record.substr(at, len)));
      at += len;
    }
    if (at != record.size()) return bad("bad lengths");
  }
  state.record = std::string(record);
  return state;
}

absl::StatusOr<KekState> ReadKekState(const storage::KeyStore* keys) {
  absl::StatusOr<std::string> record = keys->GetKey(kKekStateId);
  if (absl::IsNotFound(record.status())) {
    return absl::FailedPreconditionError("the vault has no KEK state yet");
  }
  if (!record.ok()) return record.status();
  return DecodeKekState(*record);
}

KekManager::KekManager(const storage::KeyStore* keys,
                       const hsm::KeyWrapper* wrapper, Options options)
    : keys_(keys), wrapper_(wrapper), options_(std::move(options)) {}

std::string KekManager::LabelOf(uint32_t generation) const {
  if (generation <= 1) return options_.initial_label;
  return absl::StrFormat("%s/%08x", options_.initial_label, generation);
}

uint32_t KekGenerationOf(absl::string_view label) {
  const size_t slash = label.rfind('/');
  uint32_t generation = 0;
  if (slash != absl::string_view::npos && label.size() - slash == 9 &&
      absl::SimpleHexAtoi(label.substr(slash + 1), &generation) &&
      generation > 1) {
    return generation;
  }
  return 1;
}

uint32_t KekManager::GenerationOf(absl::string_view label) const {
  // Only this vault's stem names a later generation.
  if (label.size() != options_.initial_label.size() + 9 ||
      !absl::StartsWith(label, absl::StrCat(options_.initial_label, "/"))) {
    return 1;
  }
  return KekGenerationOf(label);
}

absl::StatusOr<std::unique_ptr<KekManager>> KekManager::Open(
    const storage::KeyStore* keys, const hsm::KeyWrapper* wrapper,
    Options options, OpenReport* report) {
  if (options.initial_label.empty() ||
      options.initial_label.size() >
          kMaxKekLabelBytes - kGenerationSuffixBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("KEK label must be 1 to ",
                     kMaxKekLabelBytes - kGenerationSuffixBytes, " bytes"));
  }
  OpenReport ignored;
  if (report == nullptr) report = &ignored;
  *report = OpenReport();
  std::unique_ptr<KekManager> manager(
      new KekManager(keys, wrapper, std::move(options)));
  absl::StatusOr<KekState> state = ReadKekState(keys);
  if (absl::IsFailedPrecondition(state.status())) {
    // A new vault, or one from before KEK rotation: its keys are under the
    // configured label, generation 1.
    const std::string& label = manager->options_.initial_label;
    absl::Status kek = wrapper->CheckKek(label);
    if (absl::IsNotFound(kek) && manager->options_.create_if_missing) {
      kek = wrapper->CreateKek(label);
      report->created_kek = kek.ok();
    }
    if (!kek.ok()) return kek;
    KekState first;
    first.current = label;
    first.current_since = Millis(manager->options_.now());
    state = manager->Write(KekState(), std::move(first));
  }
  if (!state.ok()) return state.status();
  if (state->phase != KekPhase::kSteady) {
    absl::MutexLock lock(&manager->mu_);
    absl::StatusOr<std::string> done = manager->Complete(*std::move(state));
    if (!done.ok()) return done.status();
    report->resumed = true;
    state = ReadKekState(keys);
    if (!state.ok()) return state.status();
  }
  if (manager->options_.adopt_newer_keks) {
    // After a restore: the vault rotated after the backup, and backups
    // taken since need the newer KEKs. Rewrap forward to the newest (a
    // generation destroyed meanwhile is skipped) and retain the others, in
    // the same write that starts the rewrap.
    absl::MutexLock lock(&manager->mu_);
    std::vector<uint32_t> found;
    for (uint32_t g = state->generation + 1;
         g <= state->generation + kMaxRetainedKeks + 1; ++g) {
      const absl::Status present = wrapper->CheckKek(manager->LabelOf(g));
      if (present.ok()) {
        found.push_back(g);
      } else if (!absl::IsNotFound(present)) {
        return present;  // an HSM that cannot say must not pick an older one
      }
    }
    if (!found.empty()) {
      KekState rewrapping = *state;
      rewrapping.phase = KekPhase::kRewrapping;
      rewrapping.phase_started = Millis(manager->options_.now());
      rewrapping.other = manager->LabelOf(found.back());
      for (size_t i = 0; i + 1 < found.size(); ++i) {
        rewrapping.retained.emplace_back(found[i], manager->LabelOf(found[i]));
      }
      if (rewrapping.retained.size() + 1 > kMaxRetainedKeks) {
        return absl::FailedPreconditionError(absl::StrCat(
            "rolling forward after the restore would retain more than ",
            kMaxRetainedKeks, " KEKs"));
      }
      state = manager->Write(*state, std::move(rewrapping));
      if (!state.ok()) return state.status();
      absl::StatusOr<std::string> done = manager->Complete(*std::move(state));
      if (!done.ok()) return done.status();
      report->adopted = static_cast<uint32_t>(found.size());
      state = ReadKekState(keys);
      if (!state.ok()) return state.status();
    }
  } else if (state->phase == KekPhase::kSteady) {
    // A KEK of the next generation exists if a rotation crashed before
    // naming it (nothing is wrapped under it), or, while backups are kept,
    // because this directory's vault rotated on another timeline (a
    // directory moved back after a restore): then backups may need it, so
    // it stays and the next rotation uses it.
    const std::string next = manager->LabelOf(state->generation + 1);
    absl::Status orphan = wrapper->CheckKek(next);
    if (orphan.ok()) {
      if (manager->options_.retain_old_keks) {
        util::LogError(absl::StrCat(
            "ALERT KEK \"", next,
            "\" is in the HSM but not named by the KEK state; kept, since "
            "backups may need it (the next rotation uses it)"));
      } else {
        if (absl::Status s = wrapper->DestroyKek(next); !s.ok()) return s;
        report->rolled_back = true;
      }
    }
  }
  if (absl::Status s = wrapper->CheckKek(state->current); !s.ok()) return s;
  report->kek_label = state->current;
  return manager;
}

absl::StatusOr<std::unique_ptr<KekManager>> KekManager::OpenReadOnly(
    const storage::KeyStore* keys, const hsm::KeyWrapper* wrapper,
    Options options) {
  std::unique_ptr<KekManager> manager(
      new KekManager(keys, wrapper, std::move(options)));
  absl::StatusOr<KekState> state = ReadKekState(keys);
  if (!state.ok()) return state.status();
  for (const std::string* label : {&state->current, &state->other}) {
    if (label->empty()) continue;
    if (absl::Status s = wrapper->CheckKek(*label); !s.ok()) {
      if (absl::IsNotFound(s)) {
        return absl::NotFoundError(
            absl::StrCat("the HSM has no KEK \"", *label, "\""));
      }
      return s;
    }
  }
  return manager;
}

absl::StatusOr<std::string> KekManager::DestroyRetained(
    uint32_t generation) const {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<KekState> state = ReadKekState(keys_);
  if (!state.ok()) return state.status();
  KekState after = *state;
  auto it = std::find_if(after.retained.begin(), after.retained.end(),
                         [&](const auto& r) { return r.first == generation; });
  if (it == after.retained.end()) {
    return absl::NotFoundError(
        absl::StrCat("no retained KEK of generation ", generation));
  }
  const std::string label = it->second;
  after.retained.erase(it);
  // A crash after the HSM destroy leaves a label that is gone; a second
  // destroy finds nothing and drops it.
  if (absl::Status s = wrapper_->DestroyKek(label);
      !s.ok() && !absl::IsNotFound(s)) {
    return s;
  }
  if (absl::StatusOr<KekState> written = Write(*state, std::move(after));
      !written.ok()) {
    return written.status();
  }
  util::LogInfo(
      absl::StrCat("retained KEK \"", label, "\" destroyed in the HSM"));
  return label;
}

absl::StatusOr<KekState> KekManager::Write(const KekState& from,
                                           KekState to) const {
  to.record = EncodeKekState(to);
  storage::KeyUpdate update{.key_id = std::string(kKekStateId),
                            .expected = std::nullopt,
                            .record = to.record};
  if (!from.record.empty()) update.expected = from.record;
  if (absl::Status s = keys_->UpdateKeys({update}); !s.ok()) return s;
  return to;
}

absl::StatusOr<std::string> KekManager::Rotate() const {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<KekState> state = ReadKekState(keys_);
  if (!state.ok()) return state.status();
  if (state->phase == KekPhase::kSteady) {
    const std::string next = LabelOf(state->generation + 1);
    if (next.size() > kMaxKekLabelBytes) {
      return absl::FailedPreconditionError("next KEK label is too long");
    }
    // A KEK a crashed attempt (or another timeline) left is reused.
    if (!wrapper_->CheckKek(next).ok()) {
      if (absl::Status s = wrapper_->CreateKek(next); !s.ok()) return s;
    }
    KekState rewrapping = *state;
    rewrapping.phase = KekPhase::kRewrapping;
    rewrapping.phase_started = Millis(options_.now());
    rewrapping.other = next;
    state = Write(*state, std::move(rewrapping));
    if (!state.ok()) return state.status();
    util::LogInfo(absl::StrCat("KEK rotation: \"", next,
                               "\" generated in the HSM; rewrapping"));
  }
  return Complete(*std::move(state));
}

absl::StatusOr<std::string> KekManager::Complete(KekState state) const {
  if (state.phase == KekPhase::kRewrapping) {
    absl::StatusOr<KekState> retiring = Rewrap(state);
    if (!retiring.ok()) return retiring.status();
    state = *std::move(retiring);
  }
  if (state.phase == KekPhase::kRetiring) {
    absl::StatusOr<KekState> steady = Retire(state);
    if (!steady.ok()) return steady.status();
    state = *std::move(steady);
  }
  return state.current;
}

absl::StatusOr<KekState> KekManager::Rewrap(const KekState& state) const {
  // The next KEK exists (made before the state named it), unless the HSM
  // lost it, which CheckKek reports.
  if (absl::Status s = wrapper_->CheckKek(state.other); !s.ok()) return s;
  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<std::vector<std::pair<std::string, std::string>>> all =
        keys_->ListKeys();
    if (!all.ok()) return all.status();
    std::vector<storage::KeyUpdate> updates;
    for (auto& [id, record] : *all) {
      if (id == kKekStateId) continue;
      absl::StatusOr<std::optional<std::string>> label = KekLabelOf(id, record);
      if (!label.ok()) return label.status();
      if (!label->has_value() || **label == state.other) continue;
      absl::StatusOr<std::string> rewrapped =
          RewrapKeyRecord(id, record, *wrapper_, state.other);
      if (!rewrapped.ok()) return rewrapped.status();
      updates.push_back({.key_id = id,
                         .expected = std::move(record),
                         .record = *std::move(rewrapped)});
    }
    KekState retiring;
    retiring.generation = GenerationOf(state.other);
    retiring.phase = KekPhase::kRetiring;
    retiring.current_since = Millis(options_.now());
    retiring.phase_started = retiring.current_since;
    retiring.current = state.other;
    retiring.other = state.current;
    retiring.retained = state.retained;
    retiring.record = EncodeKekState(retiring);
    updates.push_back({.key_id = std::string(kKekStateId),
                       .expected = state.record,
                       .record = retiring.record});
    const absl::Status written = keys_->UpdateKeys(updates);
    if (written.ok()) {
      util::LogInfo(absl::StrCat("KEK rotation: ", updates.size() - 1,
                                 " keys rewrapped from \"", state.current,
                                 "\" to \"", state.other, "\""));
      return retiring;
    }
    if (!absl::IsFailedPrecondition(written) ||
        attempt + 1 >= kRewrapAttempts) {
      return written;
    }
  }
}

absl::StatusOr<KekState> KekManager::Retire(const KekState& state) const {
  // Nothing may still be under the old KEK: the rewrap write and the state
  // change were one, and every later key is written under the new one.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> all =
      keys_->ListKeys();
  if (!all.ok()) return all.status();
  for (const auto& [id, record] : *all) {
    if (id == kKekStateId) continue;
    absl::StatusOr<std::optional<std::string>> label = KekLabelOf(id, record);
    if (!label.ok()) return label.status();
    if (label->has_value() && **label != state.current) {
      return absl::InternalError(absl::StrCat(
          "key ", id, " is wrapped under KEK \"", **label,
          "\", not the current one; not destroying \"", state.other, "\""));
    }
  }
  KekState steady = state;
  steady.phase = KekPhase::kSteady;
  steady.other.clear();
  if (options_.retain_old_keks) {
    if (steady.retained.size() >= kMaxRetainedKeks) {
      return absl::FailedPreconditionError(absl::StrCat(
          kMaxRetainedKeks,
          " old KEKs are retained for backups: destroy one (dual control) "
          "before rotating again"));
    }
    steady.retained.emplace_back(GenerationOf(state.other), state.other);
    util::LogInfo(absl::StrCat("KEK rotation: \"", state.other,
                               "\" retained in the HSM, decrypt-only, for "
                               "backups taken before the rotation"));
  } else {
    if (absl::Status s = wrapper_->DestroyKek(state.other); !s.ok()) return s;
    util::LogInfo(absl::StrCat("KEK rotation: \"", state.other,
                               "\" destroyed in the HSM"));
  }
  return Write(state, std::move(steady));
}

}  // namespace cardvault::vault
