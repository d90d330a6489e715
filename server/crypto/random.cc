#include "server/crypto/random.h"

#include <openssl/rand.h>

#include <climits>

namespace cardvault::crypto {

absl::Status FillRandom(absl::Span<uint8_t> out) {
  if (out.size() > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError("random request too large");
  }
  if (RAND_bytes(out.data(), static_cast<int>(out.size())) != 1) {
    return absl::UnavailableError("CSPRNG failure (RAND_bytes)");
  }
  return absl::OkStatus();
}

}  // namespace cardvault::crypto
