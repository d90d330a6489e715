// A bounded pool of logged-in PKCS#11 sessions on one token.
//
// Thread safety: thread-safe. A Session is handed to one caller at a time and
// returns to the pool when it goes out of scope, so no PKCS#11 session is ever
// used by two threads at once.
#ifndef CARDVAULT_HSM_SESSION_POOL_H_
#define CARDVAULT_HSM_SESSION_POOL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_module.h"
#include "server/crypto/secret_bytes.h"

namespace cardvault::hsm {

class SessionPool;

// Exclusive, move-only use of one read-write session. Returned to its pool
// on destruction.
class Session {
 public:
  Session(Session&& other) noexcept;
  Session& operator=(Session&& other) noexcept;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session();

  CK_SESSION_HANDLE handle() const { return handle_; }
  // Unique per opened session for the pool's lifetime: unlike the handle,
  // never reused, so per-session state (an unwrapped key object) can be
  // keyed by it safely.
  uint64_t id() const { return id_; }
  CK_FUNCTION_LIST* functions() const;

 private:
  friend class SessionPool;
  Session(SessionPool* pool, CK_SESSION_HANDLE handle, uint64_t id)
      : pool_(pool), handle_(handle), id_(id) {}

  SessionPool* pool_;
  CK_SESSION_HANDLE handle_;
  uint64_t id_;
};

class SessionPool {
 public:
  struct Options {
    // Most sessions open at once; callers beyond it wait.
    size_t max_sessions = 4;
    // How long Acquire waits for a free session before UNAVAILABLE.
    absl::Duration acquire_timeout = absl::Seconds(10);
  };

  // Opens the first session on `slot` and logs in as CKU_USER with `pin`.
  // The PIN is kept in locked, non-dumpable memory to log in again after
  // the device dropped every session. `module` must outlive the pool.
  static absl::StatusOr<std::unique_ptr<SessionPool>> Create(
      const Pkcs11Module* module, CK_SLOT_ID slot, crypto::SecretBytes pin,
      Options options);

  SessionPool(const SessionPool&) = delete;
  SessionPool& operator=(const SessionPool&) = delete;
  // Logs out and closes every session. No Session may outlive the pool.
  ~SessionPool();

  // A live, logged-in session: an idle one that still answers
  // C_GetSessionInfo, or a new one (logged in again if the token forgot
  // the login). Dead sessions are closed and dropped, so the pool heals
  // once the device is back. UNAVAILABLE while the device fails.
  absl::StatusOr<Session> Acquire() const;

  CK_FUNCTION_LIST* functions() const { return module_->functions(); }

 private:
  friend class Session;
  SessionPool(const Pkcs11Module* module, CK_SLOT_ID slot,
              crypto::SecretBytes pin, Options options);
  void Release(CK_SESSION_HANDLE handle, uint64_t id) const;
  // Whether `handle` answers and is logged in (logging it in if needed).
  absl::Status Check(CK_SESSION_HANDLE handle) const;

  const Pkcs11Module* const module_;
  const CK_SLOT_ID slot_;
  const crypto::SecretBytes pin_;
  const Options options_;
  mutable absl::Mutex mu_;
  // (handle, id) of idle sessions.
  mutable std::vector<std::pair<CK_SESSION_HANDLE, uint64_t>> idle_
      ABSL_GUARDED_BY(mu_);
  mutable uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  mutable size_t open_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace cardvault::hsm

#endif  // CARDVAULT_HSM_SESSION_POOL_H_
