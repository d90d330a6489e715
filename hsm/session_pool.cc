#include "hsm/session_pool.h"

#include <tuple>
#include <utility>

#include "hsm/ck_rv.h"

namespace cardvault::hsm {

Session::Session(Session&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)),
      handle_(other.handle_),
      id_(other.id_) {}

Session& Session::operator=(Session&& other) noexcept {
  if (this != &other) {
    if (pool_ != nullptr) pool_->Release(handle_, id_);
    pool_ = std::exchange(other.pool_, nullptr);
    handle_ = other.handle_;
    id_ = other.id_;
  }
  return *this;
}

Session::~Session() {
  if (pool_ != nullptr) pool_->Release(handle_, id_);
}

CK_FUNCTION_LIST* Session::functions() const { return pool_->functions(); }

absl::StatusOr<std::unique_ptr<SessionPool>> SessionPool::Create(
    const Pkcs11Module* module, CK_SLOT_ID slot, crypto::SecretBytes pin,
    Options options) {
  if (options.max_sessions == 0) {
    return absl::InvalidArgumentError("max_sessions must be at least 1");
  }
  crypto::SecretBytes locked(pin.view(), crypto::Protection::kLockedPages);
  std::unique_ptr<SessionPool> pool(
      new SessionPool(module, slot, std::move(locked), options));
  // The first Acquire logs in; login applies to every session of this
  // application on the token while one stays open.
  absl::StatusOr<Session> first = pool->Acquire();
  if (!first.ok()) return first.status();
  return pool;
}

SessionPool::SessionPool(const Pkcs11Module* module, CK_SLOT_ID slot,
                         crypto::SecretBytes pin, Options options)
    : module_(module), slot_(slot), pin_(std::move(pin)), options_(options) {}

absl::Status SessionPool::Check(CK_SESSION_HANDLE handle) const {
  CK_FUNCTION_LIST* f = module_->functions();
  CK_SESSION_INFO info;
  if (absl::Status s =
          CkRvToStatus(f->C_GetSessionInfo(handle, &info), "C_GetSessionInfo");
      !s.ok()) {
    return s;
  }
  if (info.state == CKS_RW_USER_FUNCTIONS ||
      info.state == CKS_RO_USER_FUNCTIONS) {
    return absl::OkStatus();
  }
  CK_RV rv = f->C_Login(handle, CKU_USER, const_cast<CK_UTF8CHAR*>(pin_.data()),
                        static_cast<CK_ULONG>(pin_.size()));
  if (rv == CKR_USER_ALREADY_LOGGED_IN) return absl::OkStatus();
  return CkRvToStatus(rv, "C_Login");
}

SessionPool::~SessionPool() {
  absl::MutexLock lock(&mu_);
  if (!idle_.empty()) module_->functions()->C_Logout(idle_.front().first);
  for (const auto& [h, id] : idle_) module_->functions()->C_CloseSession(h);
  idle_.clear();
}

absl::StatusOr<Session> SessionPool::Acquire() const {
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  uint64_t id = 0;
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
      std::tie(h, id) = idle_.back();
      idle_.pop_back();
    } else {
      ++open_;  // reserve the slot; open outside the lock
      id = next_id_++;
    }
  }
  CK_FUNCTION_LIST* f = module_->functions();
  if (h == CK_INVALID_HANDLE) {
    CK_RV rv = f->C_OpenSession(slot_, CKF_SERIAL_SESSION | CKF_RW_SESSION,
                                nullptr, nullptr, &h);
    if (rv != CKR_OK) {
      absl::MutexLock lock(&mu_);
      --open_;
      return CkRvToStatus(rv, "C_OpenSession");
    }
  }
  if (absl::Status s = Check(h); !s.ok()) {
    // A dead session is dropped, not returned: the next Acquire opens anew.
    (void)f->C_CloseSession(h);
    absl::MutexLock lock(&mu_);
    --open_;
    return s;
  }
  return Session(const_cast<SessionPool*>(this), h, id);
}

void SessionPool::Release(CK_SESSION_HANDLE handle, uint64_t id) const {
  absl::MutexLock lock(&mu_);
  idle_.emplace_back(handle, id);
}

}  // namespace cardvault::hsm
