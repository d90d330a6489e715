// Which node holds the CVV given with a Tokenize, when several nodes share
// one store (docs/multinode.md), and how a node takes a CVV another holds.
//
// A CVV stays in the memory of the node it was given to (cvv_cache.h). That
// node writes, in the Tokenize's own transaction, a row of Table::kShared
// naming itself; a Detokenize on another node whose purpose releases the
// CVV reads the row and takes the CVV from the holder over mutual TLS
// (NodePeer.TakeHeldCvv). A dead holder's CVVs are gone, as with a restart.
//
// Row key: "cvv/" || token. Value, byte by byte (format 1):
//   offset  size  field
//   0       1     format version, kCvvHolderFormatV1 = 0x01
//   1       8     expires: when the holder drops the CVV untaken, Unix
//                 milliseconds, uint64 big-endian
//   9       1     holder address length A, 1..kMaxNodeAddressBytes
//   10      A     holder address: host:port of its listener
//                 (util::IsNodeAddress: a DNS name or IP literal, no
//                 scheme, no digit run that may be a card number)
// The row holds no card data, only that some CVV was given for the token;
// the TTL sweep deletes it once expired.
#ifndef CARDVAULT_SERVER_VAULT_CVV_HOLDERS_H_
#define CARDVAULT_SERVER_VAULT_CVV_HOLDERS_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/crypto/secret_bytes.h"
#include "server/util/node_address.h"

namespace cardvault::vault {

inline constexpr uint8_t kCvvHolderFormatV1 = 0x01;
inline constexpr size_t kMaxNodeAddressBytes = util::kMaxNodeAddressBytes;
inline constexpr absl::string_view kCvvHolderKeyPrefix = "cvv/";

struct CvvHolder {
  absl::Time expires = absl::InfinitePast();
  std::string address;
};

std::string CvvHolderKey(absl::string_view token);
bool IsCvvHolderKey(absl::string_view key);
// INVALID_ARGUMENT for an address that is not host:port as
// util::IsNodeAddress allows (no scheme, no wildcard, no digit run that may
// be a card number).
absl::StatusOr<std::string> EncodeCvvHolder(const CvvHolder& holder);
// DATA_LOSS for a value not in format 1.
absl::StatusOr<CvvHolder> DecodeCvvHolder(absl::string_view value);

// Takes CVVs that other nodes hold.
//
// Thread safety: implementations are thread-safe. `done` runs exactly once,
// on any thread, and must not block.
class CvvPeers {
 public:
  // The CVV (validated as 3 or 4 digits), nullopt when the holder has none;
  // UNAVAILABLE or DEADLINE_EXCEEDED when the holder cannot be asked.
  using TakeDone = absl::AnyInvocable<
      void(absl::StatusOr<std::optional<crypto::SecretBytes>>) &&>;

  virtual ~CvvPeers() = default;

  // Asks the node listening at `holder` for the CVV it holds for `token`,
  // which it releases at most once.
  virtual void TakeHeldCvv(absl::string_view holder, absl::string_view token,
                           TakeDone done) const = 0;
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_CVV_HOLDERS_H_
