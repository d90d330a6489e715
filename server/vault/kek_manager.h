// Which key-encryption key (KEK) is current, and its rotation.
//
// KEKs live only in the HSM (AES-256, sensitive, non-extractable). The first
// is labelled as configured (hsm.kek_label); generation g > 1 is labelled
// "<configured label>/<g as 8 hex digits>". The state below, stored in the
// key store beside the wrapped keys, says which one wraps new keys.
//
// KEK state record (key id kKekStateId), byte by byte:
//   offset  size  field
//   0       1     format version, kKekStateFormatV1 = 0x01
//   1       4     generation of the current KEK, uint32 big-endian
//   5       1     phase: 0 steady, 1 rewrapping, 2 retiring
//   6       8     current KEK in use since, Unix milliseconds
//   14      8     phase started, Unix milliseconds; 0 when steady
//   22      1     current KEK label length C, 1..kMaxKekLabelBytes
//   23      C     current KEK label
//   23+C    1     other KEK label length O: 0 steady; the next KEK while
//                 rewrapping; the old KEK while retiring
//   24+C    O     other KEK label
// Format 2 (kKekStateFormatV2, written when old KEKs are retained) adds:
//   24+C+O  1     retained KEK count R, 0..kMaxRetainedKeks
//   then R times: generation (4, big-endian), label length L (1), label (L)
// Retained KEKs are old KEKs kept in the HSM, decrypt-only (nothing live is
// wrapped under them, nothing new ever is), because backups still hold keys
// wrapped under them (Options::retain_old_keks).
//
// Rotation from KEK A (generation g) to B (generation g+1):
//   1. B is generated in the HSM (if a crashed attempt left it, it is
//      reused), then the state becomes rewrapping(A -> B): from now on new
//      keys are wrapped under B.
//   2. Every wrapped key still under A is rewrapped under B inside the HSM
//      and all of them are written, with the state retiring(B, old A), in
//      one atomic compare-and-set write.
//   3. A is destroyed in the HSM (or, with Options::retain_old_keks, kept
//      and listed as retained); the state becomes steady(B).
// Every step is idempotent. A crash before step 1's write leaves steady(A)
// and perhaps an unused B, which start-up destroys (rolled back); a crash
// after it leaves rewrapping or retiring, which start-up completes (rolled
// forward). No key is ever under a KEK the state does not name, because
// every new wrapped key is written on the condition that the state is the
// one its KEK was chosen from.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_VAULT_KEK_MANAGER_H_
#define CARDVAULT_SERVER_VAULT_KEK_MANAGER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "hsm/key_wrapper.h"
#include "server/storage/token_store.h"

namespace cardvault::vault {

inline constexpr absl::string_view kKekStateId = "kek-state";
inline constexpr uint8_t kKekStateFormatV1 = 0x01;
inline constexpr uint8_t kKekStateFormatV2 = 0x02;
inline constexpr size_t kMaxKekLabelBytes = 64;
inline constexpr size_t kMaxRetainedKeks = 32;

enum class KekPhase : uint8_t { kSteady = 0, kRewrapping = 1, kRetiring = 2 };

struct KekState {
  uint32_t generation = 1;
  KekPhase phase = KekPhase::kSteady;
  absl::Time current_since = absl::UnixEpoch();
  absl::Time phase_started = absl::UnixEpoch();
  std::string current;
  std::string other;   // next (rewrapping) or old (retiring); empty if steady
  std::string record;  // as stored (compare-and-set); empty if not yet
  // Old KEKs kept for backups: (generation, label), oldest first.
  std::vector<std::pair<uint32_t, std::string>> retained;

  // The KEK new keys are wrapped under: the next one while rewrapping.
  const std::string& wrapping_label() const {
    return phase == KekPhase::kRewrapping ? other : current;
  }
  // Whether a stored key may be wrapped under `label` in this state.
  bool Names(absl::string_view label) const {
    return label == current || (!other.empty() && label == other);
  }
};

// The KEK generation a label names: "<stem>/<8 hex digits>" is that
// generation, any other label generation 1 (the first KEK's).
uint32_t KekGenerationOf(absl::string_view label);

std::string EncodeKekState(const KekState& state);
// DATA_LOSS for a malformed record.
absl::StatusOr<KekState> DecodeKekState(absl::string_view record);

// The stored state; FAILED_PRECONDITION if the vault has none yet.
absl::StatusOr<KekState> ReadKekState(const storage::KeyStore* keys);

class KekManager {
 public:
  struct Options {
    // Label of the first KEK (hsm.kek_label) and stem of later ones; at
    // most kMaxKekLabelBytes - 9 bytes, leaving room for "/<generation>".
    std::string initial_label = "cardvault-kek";
    // Generate the first KEK when a new vault (no KEK state) finds none in
    // the HSM. Off by default: production KEKs come from a key ceremony, and
    // a missing one must stop start-up.
    bool create_if_missing = false;
    // Keep the old KEK in the HSM after a rotation (retained, decrypt-only)
    // instead of destroying it, so that backups taken before the rotation
    // stay readable; DestroyRetained removes it later. Default false; on
    // when backups are configured.
    bool retain_old_keks = false;
    // On the first start after a restore: KEKs of later generations than
    // the restored state's current one exist in the HSM because the vault
    // rotated after the backup. Roll forward to the newest (rewrap every key
    // under it) instead of treating the next one as a crashed rotation's
    // leftover and destroying it. Default false.
    bool adopt_newer_keks = false;
    std::function<absl::Time()> now = [] { return absl::Now(); };
  };

  // What Open found and did, for the audit trail.
  struct OpenReport {
    bool created_kek = false;  // generated the first KEK
    bool resumed = false;      // completed a rotation a crash interrupted
    bool rolled_back = false;  // destroyed a KEK a crashed rotation left
    uint32_t adopted = 0;      // newer KEKs found after a restore
    std::string kek_label;     // current after Open
  };

  // Reads (or, for a new vault, writes) the KEK state, completes or rolls
  // back a rotation a crash interrupted, and checks the current KEK in the
  // HSM: NOT_FOUND if missing, FAILED_PRECONDITION if weak. `keys` and
  // `wrapper` must outlive the manager.
  static absl::StatusOr<std::unique_ptr<KekManager>> Open(
      const storage::KeyStore* keys, const hsm::KeyWrapper* wrapper,
      Options options, OpenReport* report = nullptr);

  // Reads the stored state and checks that the HSM holds the KEKs it names;
  // never writes (to the store or the HSM). For a backup opened to be
  // verified. NOT_FOUND names a missing KEK.
  static absl::StatusOr<std::unique_ptr<KekManager>> OpenReadOnly(
      const storage::KeyStore* keys, const hsm::KeyWrapper* wrapper,
      Options options);

  KekManager(const KekManager&) = delete;
  KekManager& operator=(const KekManager&) = delete;

  // Rotates to a new KEK (steps 1-3 above). Returns the new KEK's label.
  // A failure leaves a state the next Rotate or start-up completes.
  absl::StatusOr<std::string> Rotate() const;

  // Destroys the retained KEK of `generation` in the HSM and drops it from
  // the state; returns its label. NOT_FOUND if none is retained.
  absl::StatusOr<std::string> DestroyRetained(uint32_t generation) const;

  // The state as stored now.
  absl::StatusOr<KekState> State() const { return ReadKekState(keys_); }

  const hsm::KeyWrapper* wrapper() const { return wrapper_; }
  const storage::KeyStore* keys() const { return keys_; }

  // Label of generation `generation`, and back (1 for the initial label).
  std::string LabelOf(uint32_t generation) const;
  uint32_t GenerationOf(absl::string_view label) const;

 private:
  KekManager(const storage::KeyStore* keys, const hsm::KeyWrapper* wrapper,
             Options options);
  // Runs the rotation from whatever phase `state` is in to steady.
  absl::StatusOr<std::string> Complete(KekState state) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<KekState> Rewrap(const KekState& state) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<KekState> Retire(const KekState& state) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<KekState> Write(const KekState& from, KekState to) const;

  const storage::KeyStore* const keys_;
  const hsm::KeyWrapper* const wrapper_;
  const Options options_;
  mutable absl::Mutex mu_;  // one rotation at a time
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_KEK_MANAGER_H_
