// What the server records of its own accord, for no caller: rotations and
// destructions of data keys (with the keys' own change), other key events,
// policy reloads, starts and stops. Tokenize rotates a due data key here.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_VAULT_SERVER_EVENTS_H_
#define CARDVAULT_SERVER_VAULT_SERVER_EVENTS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/commit/write_path.h"
#include "server/vault/call_recorder.h"
#include "server/vault/key_ring.h"

namespace cardvault::vault {

class ServerEvents {
 public:
  // Every pointer must outlive this.
  ServerEvents(const CallRecorder* recorder, const KeyRing* keys,
               const commit::WritePath* trail)
      : recorder_(recorder), keys_(keys), trail_(trail) {}

  // Makes a new data key primary now (on demand) and records it.
  absl::StatusOr<uint32_t> RotateDataKey() const;
  // Rotates the primary data key if it is due, and records it; a failure
  // is logged as an alert (sealing goes on under the old key).
  void RotateDueDataKey() const;
  // Destroys a retired data key (the last re-encryption pass found no record
  // under it) and records it. FAILED_PRECONDITION for any other key.
  absl::Status DestroyDataKey(uint32_t version) const;

  // Records a key event (e.g. creation); `detail` names the key, never its
  // material.
  absl::Status RecordKeyEvent(absl::string_view detail) const;
  // Records a policy reload, applied (OK) or refused (its error), with what
  // identifies the new file and what changed (`detail`).
  absl::Status RecordPolicyReload(const absl::Status& outcome,
                                  absl::string_view detail) const;
  // Records a server start or stop.
  absl::Status RecordLifecycle(::cardvault::v1::EventType type,
                               absl::string_view detail) const;

 private:
  const CallRecorder* const recorder_;
  const KeyRing* const keys_;
  const commit::WritePath* const trail_;
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_SERVER_EVENTS_H_
