// Cryptographically secure random bytes from OpenSSL's DRBG.
//
// Thread safety: thread-safe (OpenSSL 3 keeps a DRBG per thread).
#ifndef CARDVAULT_SERVER_CRYPTO_RANDOM_H_
#define CARDVAULT_SERVER_CRYPTO_RANDOM_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace cardvault::crypto {

// Fills `out` from RAND_bytes. Fails (UNAVAILABLE) only if the DRBG cannot
// be seeded; callers must then fail the request rather than fall back.
absl::Status FillRandom(absl::Span<uint8_t> out);

}  // namespace cardvault::crypto

#endif  // CARDVAULT_SERVER_CRYPTO_RANDOM_H_
