#include "server/crypto/random.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>

namespace cardvault::crypto {
namespace {

// Bumped in a forked child: buffers filled before the fork are stale.
std::atomic<uint64_t> fork_generation{0};

void OnFork() { fork_generation.fetch_add(1, std::memory_order_relaxed); }

const bool fork_handler_installed = [] {
  return pthread_atfork(nullptr, nullptr, &OnFork) == 0;
}();

// Unused random bytes of one thread: [next, end) of `bytes`.
struct PublicBuffer {
  std::array<uint8_t, kPublicRandomBufferBytes> bytes{};
  size_t next = kPublicRandomBufferBytes;
  uint64_t generation = 0;
  ~PublicBuffer() { OPENSSL_cleanse(bytes.data(), bytes.size()); }
};

}  // namespace

absl::Status FillRandom(absl::Span<uint8_t> out) {
  if (out.size() > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError("random request too large");
  }
  if (RAND_bytes(out.data(), static_cast<int>(out.size())) != 1) {
    return absl::UnavailableError("CSPRNG failure (RAND_bytes)");
  }
  return absl::OkStatus();
}

absl::Status FillPublicRandom(absl::Span<uint8_t> out) {
  if (out.size() > kPublicRandomBufferBytes || !fork_handler_installed) {
    return FillRandom(out);
  }
  thread_local PublicBuffer buffer;
  const uint64_t generation = fork_generation.load(std::memory_order_relaxed);
  if (buffer.generation != generation) {
    OPENSSL_cleanse(buffer.bytes.data(), buffer.bytes.size());
    buffer.next = kPublicRandomBufferBytes;
    buffer.generation = generation;
  }
  size_t filled = 0;
  while (filled < out.size()) {
    if (buffer.next == buffer.bytes.size()) {
      if (absl::Status s = FillRandom(absl::MakeSpan(buffer.bytes)); !s.ok()) {
        return s;
      }
      buffer.next = 0;
    }
    const size_t n =
        std::min(out.size() - filled, buffer.bytes.size() - buffer.next);
    uint8_t* from = buffer.bytes.data() + buffer.next;
    std::copy(from, from + n, out.data() + filled);
    OPENSSL_cleanse(from, n);  // never handed out twice, nor left behind
    buffer.next += n;
    filled += n;
  }
  return absl::OkStatus();
}

}  // namespace cardvault::crypto
