// Owner of secret bytes (card data, key material).
//
// Thread safety: const methods may be called concurrently; mutation needs
// external synchronisation, as for std::string.
#ifndef CARDVAULT_SERVER_CRYPTO_SECRET_BYTES_H_
#define CARDVAULT_SERVER_CRYPTO_SECRET_BYTES_H_

#include <cstddef>
#include <cstdint>
#include <ostream>

#include "absl/strings/string_view.h"

namespace cardvault::crypto {

// How the memory of a SecretBytes is protected besides being wiped.
enum class Protection {
  // Heap memory, wiped with OPENSSL_cleanse on release. For per-request data.
  kWipe,
  // Whole pages of its own, locked in RAM (mlock) and excluded from core
  // dumps (MADV_DONTDUMP), wiped on release. For long-lived key material.
  kLockedPages,
};

// Holds secret bytes and makes the safe thing the default: the buffer is
// wiped on destruction and on move-from, operator<< prints only the length,
// and equality runs in constant time. Copies must be explicit (Clone()).
class SecretBytes {
 public:
  SecretBytes() = default;
  // A zero-filled secret of `size` bytes.
  explicit SecretBytes(size_t size, Protection protection = Protection::kWipe);
  // A copy of `data`. The caller remains responsible for wiping `data`.
  explicit SecretBytes(absl::string_view data,
                       Protection protection = Protection::kWipe);

  SecretBytes(SecretBytes&& other) noexcept;
  SecretBytes& operator=(SecretBytes&& other) noexcept;
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;
  ~SecretBytes();

  SecretBytes Clone() const;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  Protection protection() const { return protection_; }

  // The bytes as a view. Never log or copy it into an unwiped buffer.
  absl::string_view view() const {
    return absl::string_view(reinterpret_cast<const char*>(data_), size_);
  }

  // Shrinks to the first `size` bytes, wiping the rest.
  void Truncate(size_t size);

  // Constant time for equal lengths (CRYPTO_memcmp).
  friend bool operator==(const SecretBytes& a, const SecretBytes& b);
  friend bool operator!=(const SecretBytes& a, const SecretBytes& b) {
    return !(a == b);
  }

  // Prints "SecretBytes(<redacted, N bytes>)", never the content.
  friend std::ostream& operator<<(std::ostream& os, const SecretBytes& s);

 private:
  void Allocate(size_t size, Protection protection);
  void Release();

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t capacity_ = 0;  // bytes allocated (whole pages for kLockedPages)
  Protection protection_ = Protection::kWipe;
};

}  // namespace cardvault::crypto

#endif  // CARDVAULT_SERVER_CRYPTO_SECRET_BYTES_H_
