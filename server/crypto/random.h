// Cryptographically secure random bytes from OpenSSL's DRBG.
//
// Thread safety: thread-safe (OpenSSL 3 keeps a DRBG per thread; the buffer
// of FillPublicRandom is per thread).
#ifndef CARDVAULT_SERVER_CRYPTO_RANDOM_H_
#define CARDVAULT_SERVER_CRYPTO_RANDOM_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace cardvault::crypto {

// Fills `out` from RAND_bytes, unbuffered: for secrets (keys). Fails
// (UNAVAILABLE) only if the DRBG cannot be seeded; callers must then fail the
// request rather than fall back.
absl::Status FillRandom(absl::Span<uint8_t> out);

// Public random values (AES-GCM nonces, tokens): the same DRBG, drawn
// kPublicRandomBufferBytes at a time into a per-thread buffer, because each
// RAND_bytes call costs more in OpenSSL's parameter lookups and locks than
// sealing a card record. Bytes handed out are wiped from the buffer; a fork
// discards every buffer, so a child never repeats its parent's values.
// Requests above the buffer's size go straight to RAND_bytes. Fails as
// FillRandom does.
inline constexpr size_t kPublicRandomBufferBytes = 1024;
absl::Status FillPublicRandom(absl::Span<uint8_t> out);

}  // namespace cardvault::crypto

#endif  // CARDVAULT_SERVER_CRYPTO_RANDOM_H_
