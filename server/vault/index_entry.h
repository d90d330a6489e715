// Keyed-hash lookups of token data and their stored entries. Every key is
// an HMAC-SHA256 under a key generated in the HSM (stored only wrapped
// under the KEK), never a plain hash of card data, so the tables cannot be
// searched by PAN without that key (PCI DSS 3.5.1.1).
//
// PAN index (table kPanIndex), for deterministic tokens:
//   key = HMAC(index key, "cardvault/pan-index" || domain length (1) ||
//              domain || token format (1) || PAN)
//   entry, byte by byte:
//   offset  size  field
//   0       1     entry format version, kIndexEntryFormatV1 = 0x01
//   1       8     expires, Unix milliseconds, uint64 big-endian; 0 = never
//                 (the token's own expiry)
//   9       T     token, 1..kMaxStoredTokenBytes
//
// Idempotency (table kIdempotency), scoped to the caller's identity:
//   key = HMAC(index key, "cardvault/idempotency" || identity length (1) ||
//              identity || idempotency key length (1) || idempotency key)
//   entry, byte by byte:
//   offset  size  field
//   0       1     entry format version, kIndexEntryFormatV1 = 0x01
//   1       8     expires (end of the idempotency window), as above
//   9       32    request digest: HMAC(index key,
//                 "cardvault/idempotency-request" || the request's fields)
//   41      1     token domain length D, 1..kMaxRecordDomainBytes
//   42      D     token domain
//   42+D    T     token, 1..kMaxStoredTokenBytes
//
// Fingerprint (not stored; computed for GetTokenInfo):
//   "fp_" || lowercase hex of the first 16 bytes of HMAC(fingerprint key,
//   "cardvault/fingerprint" || domain length (1) || domain || PAN)
// equal for the same PAN in the same domain, unrelated across domains.
#ifndef CARDVAULT_SERVER_VAULT_INDEX_ENTRY_H_
#define CARDVAULT_SERVER_VAULT_INDEX_ENTRY_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/crypto/hmac_sha256.h"
#include "server/storage/token_store.h"
#include "server/vault/token.h"

namespace cardvault::vault {

inline constexpr uint8_t kIndexEntryFormatV1 = 0x01;
inline constexpr size_t kMaxStoredTokenBytes = 64;
inline constexpr size_t kMaxIdempotencyKeyBytes = 128;
inline constexpr size_t kFingerprintBytes = 16;

struct IndexEntry {
  std::string token;
  absl::Time expires = absl::InfiniteFuture();
};

struct IdempotencyEntry {
  std::string request_digest;
  std::string domain;
  std::string token;
  absl::Time expires = absl::InfiniteFuture();
};

std::string PanIndexKey(const crypto::HmacSha256& key, absl::string_view domain,
                        TokenFormat format, absl::string_view pan);
std::string IdempotencyKey(const crypto::HmacSha256& key,
                           absl::string_view identity,
                           absl::string_view idempotency_key);
std::string Fingerprint(const crypto::HmacSha256& key, absl::string_view domain,
                        absl::string_view pan);

std::string EncodeIndexEntry(const IndexEntry& entry);
absl::StatusOr<IndexEntry> DecodeIndexEntry(absl::string_view value);
std::string EncodeIdempotencyEntry(const IdempotencyEntry& entry);
absl::StatusOr<IdempotencyEntry> DecodeIdempotencyEntry(
    absl::string_view value);

// When the value stored under `key` in `table` expires, for the compaction
// filter and the TTL sweep; InfiniteFuture for values that never expire and
// for malformed ones (kept for an operator to inspect rather than silently
// dropped).
absl::Time StoredExpiry(storage::Table table, absl::string_view key,
                        absl::string_view value);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_INDEX_ENTRY_H_
