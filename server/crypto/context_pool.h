// A bounded free list of keyed OpenSSL contexts, so that a call reuses a
// context keyed before rather than allocating and keying its own (keying
// costs more than a card record's AES-GCM or an audit record's HMAC).
//
// Thread safety: thread-safe; a context taken is used by its taker alone
// until it is put back.
#ifndef CARDVAULT_SERVER_CRYPTO_CONTEXT_POOL_H_
#define CARDVAULT_SERVER_CRYPTO_CONTEXT_POOL_H_

#include <cstddef>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace cardvault::crypto {

// `Ctx` is a std::unique_ptr to an OpenSSL context whose deleter frees (and
// so wipes) it.
template <typename Ctx>
class ContextPool {
 public:
  // Contexts kept for reuse; more concurrent callers make their own, which
  // are freed when put back to a full pool.
  static constexpr size_t kMaxKept = 8;

  ContextPool() = default;
  ContextPool(const ContextPool&) = delete;
  ContextPool& operator=(const ContextPool&) = delete;

  // A context put back before, or nullptr if none is free.
  Ctx Take() {
    absl::MutexLock lock(&mu_);
    if (free_.empty()) return nullptr;
    Ctx ctx = std::move(free_.back());
    free_.pop_back();
    return ctx;
  }

  // Keeps `ctx` for a later Take, or frees it if kMaxKept are kept. Only
  // contexts whose last use succeeded are put back.
  void Put(Ctx ctx) {
    absl::MutexLock lock(&mu_);
    if (free_.size() < kMaxKept) free_.push_back(std::move(ctx));
  }

 private:
  absl::Mutex mu_;
  std::vector<Ctx> free_ ABSL_GUARDED_BY(mu_);
};

}  // namespace cardvault::crypto

#endif  // CARDVAULT_SERVER_CRYPTO_CONTEXT_POOL_H_
