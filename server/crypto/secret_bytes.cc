#include "server/crypto/secret_bytes.h"

#include <openssl/crypto.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <new>
#include <utility>

namespace cardvault::crypto {
namespace {

size_t RoundUpToPages(size_t size) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return ((size + page - 1) / page) * page;
}

}  // namespace

SecretBytes::SecretBytes(size_t size, Protection protection) {
  Allocate(size, protection);
}

SecretBytes::SecretBytes(absl::string_view data, Protection protection) {
  Allocate(data.size(), protection);
  if (!data.empty()) std::memcpy(data_, data.data(), data.size());
}

SecretBytes::SecretBytes(SecretBytes&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      capacity_(std::exchange(other.capacity_, 0)),
      protection_(other.protection_) {}

SecretBytes& SecretBytes::operator=(SecretBytes&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    capacity_ = std::exchange(other.capacity_, 0);
    protection_ = other.protection_;
  }
  return *this;
}

SecretBytes::~SecretBytes() { Release(); }

SecretBytes SecretBytes::Clone() const {
  return SecretBytes(view(), protection_);
}

void SecretBytes::Truncate(size_t size) {
  if (size >= size_) return;
  OPENSSL_cleanse(data_ + size, size_ - size);
  size_ = size;
}

void SecretBytes::Allocate(size_t size, Protection protection) {
  protection_ = protection;
  size_ = size;
  if (size == 0) return;
  if (protection == Protection::kWipe) {
    capacity_ = size;
    data_ = new uint8_t[size]();
    return;
  }
  // Pages of its own, so that locking and MADV_DONTDUMP cover nothing else.
  capacity_ = RoundUpToPages(size);
  void* p = mmap(nullptr, capacity_, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  // Best effort: a failed mlock (RLIMIT_MEMLOCK) still leaves the memory
  // wiped and out of core dumps; the hardening check reports the limit.
  (void)mlock(p, capacity_);
  (void)madvise(p, capacity_, MADV_DONTDUMP);
  data_ = static_cast<uint8_t*>(p);
}

void SecretBytes::Release() {
  if (data_ == nullptr) return;
  OPENSSL_cleanse(data_, capacity_);
  if (protection_ == Protection::kWipe) {
    delete[] data_;
  } else {
    munlock(data_, capacity_);
    munmap(data_, capacity_);
  }
  data_ = nullptr;
  size_ = 0;
  capacity_ = 0;
}

bool operator==(const SecretBytes& a, const SecretBytes& b) {
  if (a.size_ != b.size_) return false;
  if (a.size_ == 0) return true;
  return CRYPTO_memcmp(a.data_, b.data_, a.size_) == 0;
}

std::ostream& operator<<(std::ostream& os, const SecretBytes& s) {
  return os << "SecretBytes(<redacted, " << s.size_ << " bytes>)";
}

}  // namespace cardvault::crypto
