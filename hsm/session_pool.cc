#include "hsm/session_pool.h"

#include <utility>

#include "hsm/ck_rv.h"

namespace cardvault::hsm {

Session::Session(Session&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)), handle_(other.handle_) {}

Session& Session::operator=(Session&& other) noexcept {
  if (this != &other) {
    if (pool_ != nullptr) pool_->Release(handle_);
    pool_ = std::exchange(other.pool_, nullptr);
    handle_ = other.handle_;
  }
  return *this;
}

Session::~Session() {
  if (pool_ != nullptr) pool_->Release(handle_);
}

CK_FUNCTION_LIST* Session::functions() const { return pool_->functions(); }

absl::StatusOr<std::unique_ptr<SessionPool>> SessionPool::Create(
    const Pkcs11Module* module, CK_SLOT_ID slot, crypto::SecretBytes pin,
    Options options) {
  if (options.max_sessions == 0) {
    return absl::InvalidArgumentError("max_sessions must be at least 1");
  }
  std::unique_ptr<SessionPool> pool(new SessionPool(module, slot, options));
  absl::StatusOr<Session> first = pool->Acquire();
  if (!first.ok()) return first.status();
  // Login applies to every session of this application on the token; the
  // pool keeps at least one session open so the login state persists.
  CK_RV rv = module->functions()->C_Login(first->handle(), CKU_USER, pin.data(),
                                          static_cast<CK_ULONG>(pin.size()));
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
    return CkRvToStatus(rv, "C_Login");
  }
  return pool;
}

SessionPool::SessionPool(const Pkcs11Module* module, CK_SLOT_ID slot,
                         Options options)
    : module_(module), slot_(slot), options_(options) {}

SessionPool::~SessionPool() {
  absl::MutexLock lock(&mu_);
  if (!idle_.empty()) module_->functions()->C_Logout(idle_.front());
  for (CK_SESSION_HANDLE h : idle_) module_->functions()->C_CloseSession(h);
  idle_.clear();
}

absl::StatusOr<Session> SessionPool::Acquire() const {
  {
    absl::MutexLock lock(&mu_);
    auto available = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !idle_.empty() || open_ < options_.max_sessions;
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&available),
                              options_.acquire_timeout)) {
      return absl::UnavailableError("no PKCS#11 session free in time");
    }
    if (!idle_.empty()) {
      CK_SESSION_HANDLE h = idle_.back();
      idle_.pop_back();
      return Session(const_cast<SessionPool*>(this), h);
    }
    ++open_;  // reserve the slot; open outside the lock
  }
  CK_SESSION_HANDLE handle = CK_INVALID_HANDLE;
  CK_RV rv = module_->functions()->C_OpenSession(
      slot_, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &handle);
  if (rv != CKR_OK) {
    absl::MutexLock lock(&mu_);
    --open_;
    return CkRvToStatus(rv, "C_OpenSession");
  }
  return Session(const_cast<SessionPool*>(this), handle);
}

void SessionPool::Release(CK_SESSION_HANDLE handle) const {
  absl::MutexLock lock(&mu_);
  idle_.push_back(handle);
}

}  // namespace cardvault::hsm
