// Card verification values held only in process memory, for the short time
// between Tokenize and the authorization that needs them (PCI DSS 3.3.1.2
// allows no storage after authorization, and none on disk at all).
//
// Each value is sealed (AES-256-GCM, associated data = token) under a key
// drawn at start-up into locked, non-dumpable memory and never stored, so a
// CVV is in clear only while a call handles it. An entry is returned at most
// once (Take removes it) and is wiped when taken, replaced or expired; a
// restart loses every entry, by design.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_VAULT_CVV_CACHE_H_
#define CARDVAULT_SERVER_VAULT_CVV_CACHE_H_

#include <cstddef>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/crypto/aes_gcm.h"
#include "server/crypto/secret_bytes.h"

namespace cardvault::vault {

class CvvCache {
 public:
  struct Options {
    // How long a CVV is kept when nobody takes it. Default 15 minutes.
    absl::Duration ttl = absl::Minutes(15);
    // Most entries held; Put fails with RESOURCE_EXHAUSTED beyond. Bounds
    // memory at roughly 100 bytes per entry.
    size_t max_entries = 100000;
  };

  static absl::StatusOr<std::unique_ptr<CvvCache>> Create(Options options);

  // Holds `cvv` for `token` until `now + ttl`, replacing any earlier one.
  absl::Status Put(absl::string_view token, const crypto::SecretBytes& cvv,
                   absl::Time now) const;

  // The CVV held for `token`, removed from the cache; nullopt if none or
  // expired.
  std::optional<crypto::SecretBytes> Take(absl::string_view token,
                                          absl::Time now) const;

  // Drops the CVV held for `token`, if any (token deleted).
  void Erase(absl::string_view token) const;

  // What is held for `token` at `now`, compared with `cvv` in constant time
  // (an idempotent retry must not carry another CVV). Nothing is removed.
  enum class Held { kNone, kSame, kDifferent };
  Held Compare(absl::string_view token, const crypto::SecretBytes& cvv,
               absl::Time now) const;

  // How long a CVV is held untaken.
  absl::Duration ttl() const { return options_.ttl; }

  // Entries held, expired ones included until the next Put or Take.
  size_t size() const;

 private:
  struct Entry {
    std::string sealed;
    absl::Time expires;
  };
  CvvCache(Options options, std::unique_ptr<crypto::AesGcm> key)
      : options_(options), key_(std::move(key)) {}
  // Removes expired entries, oldest first (entries expire in Put order).
  void DropExpired(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  const std::unique_ptr<crypto::AesGcm> key_;
  mutable absl::Mutex mu_;
  mutable absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  // (expiry, token) in Put order; stale pairs are skipped.
  mutable std::deque<std::pair<absl::Time, std::string>> order_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_CVV_CACHE_H_
