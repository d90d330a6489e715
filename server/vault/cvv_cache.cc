#include "server/vault/cvv_cache.h"

#include <openssl/crypto.h>

#include "absl/strings/str_cat.h"
#include "server/crypto/random.h"

namespace cardvault::vault {
namespace {

constexpr absl::string_view kAadLabel = "cardvault/cvv/";

// Overwrites a sealed value before its memory is released.
void Wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
}

}  // namespace

absl::StatusOr<std::unique_ptr<CvvCache>> CvvCache::Create(Options options) {
  if (options.ttl <= absl::ZeroDuration() || options.max_entries == 0) {
    return absl::InvalidArgumentError("bad CVV cache options");
  }
  crypto::SecretBytes key(crypto::AesGcm::kKeySize,
                          crypto::Protection::kLockedPages);
  if (absl::Status s =
          crypto::FillRandom(absl::MakeSpan(key.data(), key.size()));
      !s.ok()) {
    return s;
  }
  absl::StatusOr<std::unique_ptr<crypto::AesGcm>> aead =
      crypto::AesGcm::Create(std::move(key));
  if (!aead.ok()) return aead.status();
  return std::unique_ptr<CvvCache>(new CvvCache(options, *std::move(aead)));
}

void CvvCache::DropExpired(absl::Time now) const {
  while (!order_.empty() && order_.front().first <= now) {
    auto it = entries_.find(order_.front().second);
    // A later Put of the same token has a later expiry: keep that one.
    if (it != entries_.end() && it->second.expires <= now) {
      Wipe(it->second.sealed);
      entries_.erase(it);
    }
    order_.pop_front();
  }
}

absl::Status CvvCache::Put(absl::string_view token,
                           const crypto::SecretBytes& cvv,
                           absl::Time now) const {
  absl::StatusOr<std::string> sealed =
      key_->Seal(cvv.view(), absl::StrCat(kAadLabel, token));
  if (!sealed.ok()) return sealed.status();
  const absl::Time expires = now + options_.ttl;
  absl::MutexLock lock(&mu_);
  DropExpired(now);
  auto it = entries_.find(token);
  if (it == entries_.end() && entries_.size() >= options_.max_entries) {
    return absl::ResourceExhaustedError(
        "too many card verification values held");
  }
  if (it != entries_.end()) Wipe(it->second.sealed);
  entries_[std::string(token)] = Entry{*std::move(sealed), expires};
  order_.emplace_back(expires, std::string(token));
  return absl::OkStatus();
}

std::optional<crypto::SecretBytes> CvvCache::Take(absl::string_view token,
                                                  absl::Time now) const {
  Entry entry;
  {
    absl::MutexLock lock(&mu_);
    DropExpired(now);
    auto it = entries_.find(token);
    if (it == entries_.end()) return std::nullopt;
    entry = std::move(it->second);
    entries_.erase(it);
  }
  std::optional<crypto::SecretBytes> out;
  if (entry.expires > now) {
    absl::StatusOr<crypto::SecretBytes> cvv =
        key_->Open(entry.sealed, absl::StrCat(kAadLabel, token));
    if (cvv.ok()) out = *std::move(cvv);
  }
  Wipe(entry.sealed);
  return out;
}

void CvvCache::Erase(absl::string_view token) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(token);
  if (it == entries_.end()) return;
  Wipe(it->second.sealed);
  entries_.erase(it);
}

CvvCache::Held CvvCache::Compare(absl::string_view token,
                                 const crypto::SecretBytes& cvv,
                                 absl::Time now) const {
  std::string sealed;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(token);
    if (it == entries_.end() || it->second.expires <= now) return Held::kNone;
    sealed = it->second.sealed;
  }
  absl::StatusOr<crypto::SecretBytes> held =
      key_->Open(sealed, absl::StrCat(kAadLabel, token));
  Wipe(sealed);
  if (!held.ok()) return Held::kNone;
  return *held == cvv ? Held::kSame : Held::kDifferent;
}

size_t CvvCache::size() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

}  // namespace cardvault::vault
