// Moves card records sealed under decrypt-only data keys to the primary, so
// that old keys can be retired and destroyed (PCI DSS 3.6.1, 3.7.5).
//
// A pass walks the tokens table in key order, in chunks. Each chunk's
// records under other keys are opened, resealed under the primary (same
// header and associated data but the key version) and written back in one
// write, each only if the record is still what was read (compare-and-set,
// so a concurrent delete wins), with one KEY_EVENT audit record for the
// chunk. Traffic goes on meanwhile: chunks go through the same group-commit
// writer as requests. A pass is idempotent, so a crash loses nothing: the
// next pass (at start-up and every interval) finishes the work. At its end
// the per-key record counts go to the key ring, which marks decrypt-only
// keys without records as retired.
//
// Thread safety: thread-safe; passes are serialised.
#ifndef CARDVAULT_SERVER_VAULT_REENCRYPTOR_H_
#define CARDVAULT_SERVER_VAULT_REENCRYPTOR_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/commit/write_path.h"
#include "server/storage/token_store.h"
#include "server/vault/key_ring.h"

namespace cardvault::vault {

class Reencryptor {
 public:
  struct Options {
    // Records read per chunk (and at most resealed per write).
    size_t chunk_records = 512;
  };

  struct PassResult {
    uint64_t scanned = 0;
    uint64_t reencrypted = 0;
    // Records per data-key version at the end of the pass.
    std::map<uint32_t, uint64_t> records_by_version;
  };

  // All pointers must outlive the job.
  static absl::StatusOr<std::unique_ptr<Reencryptor>> Create(
      const storage::RecordStore* records, const KeyRing* keys,
      const commit::WritePath* audit, Options options);
  // One full pass over the tokens table. With a `fence` (the background
  // lease, coordination/job_lease.h), every write holds only while it does.
  absl::StatusOr<PassResult> RunPass(
      const std::optional<storage::Condition>& fence = std::nullopt) const;

  // The pass of the background job: none when no key but the primary is
  // left (nothing can be under an old key).
  absl::Status RunScheduledPass(const storage::Condition& fence) const;

  // Ends a pass in progress after its current chunk, and every later one at
  // once (a stopping server).
  void Stop() const { stop_.Notify(); }

  // Records moved to the primary so far, and records left under other keys
  // at the end of the last pass (for the metrics file).
  uint64_t reencrypted_total() const { return reencrypted_total_.load(); }
  uint64_t pending() const { return pending_.load(); }
  // Full passes completed by this process (pending() is meaningful once
  // this is at least 1).
  uint64_t passes() const { return passes_.load(); }

 private:
  Reencryptor(const storage::RecordStore* records, const KeyRing* keys,
              const commit::WritePath* audit, Options options)
      : records_(records), keys_(keys), audit_(audit), options_(options) {}
  // Reseals one chunk's records under other keys; adds the chunk's record
  // counts to `result`.
  absl::Status ReencryptChunk(
      const std::vector<std::pair<std::string, std::string>>& chunk,
      const std::optional<storage::Condition>& fence, PassResult* result) const;

  const storage::RecordStore* const records_;
  const KeyRing* const keys_;
  const commit::WritePath* const audit_;
  const Options options_;
  mutable absl::Mutex pass_mu_;
  mutable std::atomic<uint64_t> reencrypted_total_{0};
  mutable std::atomic<uint64_t> pending_{0};
  mutable std::atomic<uint64_t> passes_{0};
  mutable absl::Notification stop_;
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_REENCRYPTOR_H_
