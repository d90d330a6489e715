#include "server/vault/key_ring.h"

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/util/log.h"
#include "server/vault/wrapped_keys.h"

namespace cardvault::vault {

std::string DataKeyId(uint32_t version) {
  return WrappedKeyId(kDataKeyPrefix, version);
}

std::string EncryptionsCounterId(uint32_t version) {
  return DataKeyId(version);
}

std::string NewRecordsCounterId(uint32_t version) {
  return DataKeyId(version) + "/new-records";
}

absl::string_view KeyStateName(KeyState state) {
  switch (state) {
    case KeyState::kActive:
      return "active";
    case KeyState::kDecryptOnly:
      return "decrypt-only";
    case KeyState::kRetired:
      return "retired";
    case KeyState::kDestroyed:
      return "destroyed";
  }
  return "unknown";
}

namespace {

KeyCustody CustodyOf(const KeyRing::Options& options) {
  return options.keys_in_hsm ? KeyCustody::kHsm : KeyCustody::kHostMemory;
}

// The AEAD of a loaded data key: the HSM's, or one over the unwrapped key.
absl::StatusOr<std::shared_ptr<const crypto::Aead>> AeadOf(StoredKey stored) {
  if (stored.in_hsm != nullptr) return std::move(stored.in_hsm);
  absl::StatusOr<std::unique_ptr<crypto::AesGcm>> aead =
      crypto::AesGcm::Create(std::move(stored.key));
  if (!aead.ok()) return aead.status();
  return std::shared_ptr<const crypto::Aead>(*std::move(aead));
}

}  // namespace

absl::StatusOr<MacKey> LoadMacKey(const KekManager* kek,
                                  absl::string_view prefix,
                                  bool create_if_missing) {
  bool created = false;
  absl::StatusOr<std::map<uint32_t, crypto::SecretBytes>> plain =
      LoadWrappedKeys(kek, prefix, create_if_missing, &created);
  if (!plain.ok()) return plain.status();
  if (plain->empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("no live key under ", prefix));
  }
  auto newest = plain->rbegin();
  absl::StatusOr<std::unique_ptr<crypto::HmacSha256>> mac =
      crypto::HmacSha256::Create(std::move(newest->second));
  if (!mac.ok()) return mac.status();
  return MacKey{newest->first, *std::move(mac), created};
}

absl::StatusOr<std::unique_ptr<KeyRing>> KeyRing::Load(
    const KekManager* kek, Options options, bool* created_first_key) {
  if (created_first_key != nullptr) *created_first_key = false;
  if (options.max_encryptions_per_key == 0 ||
      options.max_encryptions_per_key > kMaxGcmEncryptionsPerKey ||
      options.cryptoperiod <= absl::ZeroDuration() || !options.now ||
      options.reservation_block == 0 ||
      options.refresh_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("bad key ring options");
  }
  absl::StatusOr<std::map<uint32_t, StoredKey>> stored =
      LoadStoredKeys(kek, kDataKeyPrefix, CustodyOf(options));
  if (!stored.ok()) return stored.status();
  if (stored->empty() && options.create_first_key) {
    const absl::Time now = options.now();
    absl::StatusOr<StoredKey> first =
        CreateStoredKey(kek, kDataKeyPrefix, 1, now, now + options.cryptoperiod,
                        CustodyOf(options));
    if (!first.ok()) return first.status();
    stored->emplace(1, *std::move(first));
    if (created_first_key != nullptr) *created_first_key = true;
  }
  absl::StatusOr<std::map<std::string, uint64_t>> uses = kek->keys()->KeyUses();
  if (!uses.ok()) return uses.status();
  std::map<uint32_t, Entry> ring;
  for (auto& [version, s] : *stored) {
    Entry e;
    e.created = s.created;
    e.cryptoperiod_end = s.cryptoperiod_end;
    e.destroyed = s.destroyed;
    auto use = uses->find(EncryptionsCounterId(version));
    if (use != uses->end()) e.encryptions = use->second;
    auto fresh = uses->find(NewRecordsCounterId(version));
    if (fresh != uses->end()) e.new_records = fresh->second;
    if (!s.destroyed) {
      absl::StatusOr<std::shared_ptr<const crypto::Aead>> aead =
          AeadOf(std::move(s));
      if (!aead.ok()) return aead.status();
      e.key = *std::move(aead);
    }
    ring.emplace(version, std::move(e));
  }
  if (std::none_of(ring.begin(), ring.end(),
                   [](const auto& e) { return !e.second.destroyed; })) {
    return absl::FailedPreconditionError("no data-encryption key available");
  }
  if (options.reservations != nullptr) {
    // Encryptions counted before reservations existed (or by a store
    // restored without them) are reserved once, for nobody.
    for (const auto& [version, e] : ring) {
      if (e.destroyed) continue;
      const std::string counter = EncryptionsCounterId(version);
      absl::StatusOr<uint64_t> reserved =
          options.reservations->Reserved(counter);
      if (!reserved.ok()) return reserved.status();
      if (*reserved >= e.encryptions) continue;
      const uint64_t deficit = e.encryptions - *reserved;
      absl::StatusOr<coordination::UseReservations::Grant> burnt =
          options.reservations->Reserve(counter, 1, deficit,
                                        kMaxGcmEncryptionsPerKey);
      if (!burnt.ok() && !absl::IsResourceExhausted(burnt.status())) {
        return burnt.status();
      }
    }
  }
  auto loaded = std::unique_ptr<KeyRing>(
      new KeyRing(kek, std::move(options), std::move(ring)));
  if (loaded->options_.refresh_interval > absl::ZeroDuration()) {
    loaded->refresher_ = std::thread([r = loaded.get()] {
      while (!r->stop_refreshing_.WaitForNotificationWithTimeout(
          r->options_.refresh_interval)) {
        if (absl::Status s = r->Refresh(); !s.ok()) {
          util::LogError(
              absl::StrCat("data key refresh failed: ", s.ToString()));
        }
      }
    });
  }
  return loaded;
}

KeyRing::~KeyRing() {
  stop_refreshing_.Notify();
  if (refresher_.joinable()) refresher_.join();
}

absl::StatusOr<std::unique_ptr<KeyRing>> KeyRing::FromKeys(
    std::map<uint32_t, crypto::SecretBytes> keys) {
  if (keys.empty()) {
    return absl::FailedPreconditionError("no data-encryption key available");
  }
  std::map<uint32_t, Entry> ring;
  for (auto& [version, key] : keys) {
    absl::StatusOr<std::unique_ptr<crypto::AesGcm>> aead =
        crypto::AesGcm::Create(std::move(key));
    if (!aead.ok()) return aead.status();
    ring[version].key = *std::move(aead);
  }
  return std::unique_ptr<KeyRing>(
      new KeyRing(nullptr, Options(), std::move(ring)));
}

KeyRing::KeyRing(const KekManager* kek, Options options,
                 std::map<uint32_t, Entry> keys)
    : kek_(kek), options_(std::move(options)), keys_(std::move(keys)) {
  absl::MutexLock lock(&mu_);
  refreshed_ = options_.now();
  // The primary is the newest live key.
  for (auto it = keys_.rbegin(); it != keys_.rend(); ++it) {
    if (!it->second.destroyed) {
      primary_ = it->first;
      break;
    }
  }
}

KeyRing::Lease::Lease(Lease&& other) noexcept
    : ring_(other.ring_),
      version_(other.version_),
      key_(std::move(other.key_)) {
  other.ring_ = nullptr;
}

KeyRing::Lease::~Lease() {
  if (ring_ != nullptr) ring_->Release(version_);
}

absl::StatusOr<KeyRing::Lease> KeyRing::LeasePrimary(uint64_t encryptions,
                                                     Use use) const {
  const absl::Time now = options_.now();
  for (int attempt = 0;; ++attempt) {
    uint32_t short_of = 0;
    {
      absl::MutexLock lock(&mu_);
      if (options_.refresh_interval > absl::ZeroDuration() &&
          options_.retire_grace > options_.refresh_interval &&
          now - refreshed_ >
              options_.retire_grace - options_.refresh_interval) {
        return absl::UnavailableError(
            "data keys not read from the store lately: not sealing under a "
            "key another node may have retired");
      }
      Entry& e = keys_.at(primary_);
      if (e.encryptions + encryptions > kMaxGcmEncryptionsPerKey) {
        return absl::UnavailableError(
            "data key reached its encryption limit and no new key is "
            "available");
      }
      if (options_.reservations == nullptr || e.in_hand >= encryptions) {
        if (options_.reservations != nullptr) e.in_hand -= encryptions;
        e.encryptions += encryptions;
        if (use == Use::kNewRecords) e.new_records += encryptions;
        ++e.leases;
        return Lease(this, primary_, e.key);
      }
      short_of = primary_;
    }
    // Reserved outside mu_ (a store round trip); the primary may change
    // meanwhile, then the next attempt reserves under the new one.
    if (attempt >= 2) {
      return absl::UnavailableError(
          "could not reserve encryptions under the primary data key");
    }
    if (absl::Status s = ReserveUses(short_of, encryptions); !s.ok()) {
      return s;
    }
  }
}

absl::Status KeyRing::ReserveUses(uint32_t version, uint64_t n) const {
  absl::MutexLock reserving(&reserve_mu_);
  {
    absl::ReaderMutexLock lock(&mu_);
    if (keys_.at(version).in_hand >= n) return absl::OkStatus();
  }
  absl::StatusOr<coordination::UseReservations::Grant> grant =
      options_.reservations->Reserve(EncryptionsCounterId(version), n,
                                     std::max(n, options_.reservation_block),
                                     kMaxGcmEncryptionsPerKey);
  if (absl::IsResourceExhausted(grant.status())) {
    return absl::UnavailableError(
        "data key reached its encryption limit and no new key is available");
  }
  if (!grant.ok()) return grant.status();
  absl::MutexLock lock(&mu_);
  keys_.at(version).in_hand += grant->granted;
  return absl::OkStatus();
}

void KeyRing::Release(uint32_t version) const {
  absl::MutexLock lock(&mu_);
  --keys_.at(version).leases;
}

void KeyRing::AwaitNoLeases(uint32_t version) const {
  absl::MutexLock lock(&mu_);
  auto it = keys_.find(version);
  if (it == keys_.end()) return;
  const int* leases = &it->second.leases;
  mu_.Await(absl::Condition(
      +[](const int* n) { return *n == 0; }, leases));
}

uint32_t KeyRing::primary_version() const {
  absl::ReaderMutexLock lock(&mu_);
  return primary_;
}

absl::StatusOr<std::shared_ptr<const crypto::Aead>> KeyRing::Get(
    uint32_t version) const {
  for (int attempt = 0;; ++attempt) {
    {
      absl::ReaderMutexLock lock(&mu_);
      auto it = keys_.find(version);
      if (it != keys_.end() && it->second.key != nullptr) {
        return it->second.key;
      }
      if (it != keys_.end() || attempt > 0 || kek_ == nullptr) {
        return absl::NotFoundError(
            absl::StrCat("no data key of version ", version));
      }
    }
    // A version this ring never had may be a key another node made since.
    {
      absl::MutexLock refreshing(&refresh_mu_);
      const absl::Time now = absl::Now();
      if (now - last_lazy_refresh_ < absl::Seconds(1)) continue;
      last_lazy_refresh_ = now;
    }
    if (absl::Status s = Refresh(); !s.ok()) return s;
  }
}

absl::Status KeyRing::Refresh() const {
  if (kek_ == nullptr) return absl::OkStatus();
  absl::MutexLock refreshing(&refresh_mu_);
  std::set<uint32_t> held;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [version, e] : keys_) held.insert(version);
  }
  absl::StatusOr<std::map<uint32_t, StoredKey>> stored =
      LoadStoredKeys(kek_, kDataKeyPrefix, CustodyOf(options_),
                     [&](uint32_t v) { return !held.contains(v); });
  if (!stored.ok()) return stored.status();
  absl::StatusOr<std::map<std::string, uint64_t>> uses =
      kek_->keys()->CountersWithPrefix(kDataKeyPrefix);
  if (!uses.ok()) return uses.status();
  std::map<uint32_t, Entry> fresh;
  for (auto& [version, s] : *stored) {
    if (held.contains(version)) continue;
    Entry e;
    e.created = s.created;
    e.cryptoperiod_end = s.cryptoperiod_end;
    e.destroyed = s.destroyed;
    if (!s.destroyed) {
      absl::StatusOr<std::shared_ptr<const crypto::Aead>> aead =
          AeadOf(std::move(s));
      if (!aead.ok()) return aead.status();
      e.key = *std::move(aead);
    }
    fresh.emplace(version, std::move(e));
  }
  absl::MutexLock lock(&mu_);
  refreshed_ = options_.now();
  for (auto& [version, e] : fresh) keys_.emplace(version, std::move(e));
  for (const auto& [version, s] : *stored) {
    Entry& e = keys_.at(version);
    if (s.destroyed && !e.destroyed) {
      e.key.reset();  // the last lease's owner wipes it (SecretBytes)
      e.destroyed = true;
      e.in_hand = 0;
    }
  }
  for (auto& [version, e] : keys_) {
    auto use = uses->find(EncryptionsCounterId(version));
    if (use != uses->end())
      e.encryptions = std::max(e.encryptions, use->second);
    auto made = uses->find(NewRecordsCounterId(version));
    if (made != uses->end()) {
      e.new_records = std::max(e.new_records, made->second);
    }
  }
  for (auto it = keys_.rbegin(); it != keys_.rend(); ++it) {
    if (!it->second.destroyed) {
      primary_ = it->first;
      break;
    }
  }
  return absl::OkStatus();
}

bool KeyRing::PrimaryDue() const {
  const absl::Time now = options_.now();
  absl::ReaderMutexLock lock(&mu_);
  const Entry& e = keys_.at(primary_);
  return e.new_records >= options_.max_encryptions_per_key ||
         now >= e.cryptoperiod_end;
}

absl::StatusOr<uint32_t> KeyRing::Rotate(bool* made_here) const {
  absl::MutexLock rotating(&rotate_mu_);
  return RotateLocked(made_here);
}

absl::StatusOr<std::optional<uint32_t>> KeyRing::RotateIfDue(
    bool* made_here) const {
  absl::MutexLock rotating(&rotate_mu_);
  if (!PrimaryDue()) return std::nullopt;
  absl::StatusOr<uint32_t> version = RotateLocked(made_here);
  if (!version.ok()) return version.status();
  return *version;
}

absl::StatusOr<uint32_t> KeyRing::RotateLocked(bool* made_here) const {
  if (made_here != nullptr) *made_here = false;
  if (kek_ == nullptr) {
    return absl::FailedPreconditionError("this key ring cannot rotate");
  }
  uint32_t next;
  {
    absl::ReaderMutexLock lock(&mu_);
    next = keys_.rbegin()->first + 1;
  }
  const absl::Time now = options_.now();
  absl::StatusOr<StoredKey> stored =
      CreateStoredKey(kek_, kDataKeyPrefix, next, now,
                      now + options_.cryptoperiod, CustodyOf(options_));
  if (absl::IsAlreadyExists(stored.status())) {
    // Another node rotated first: its key is the primary now.
    if (absl::Status s = Refresh(); !s.ok()) return s;
    absl::ReaderMutexLock lock(&mu_);
    return primary_;
  }
  if (!stored.ok()) return stored.status();
  absl::StatusOr<std::shared_ptr<const crypto::Aead>> aead =
      AeadOf(*std::move(stored));
  if (!aead.ok()) return aead.status();
  Entry e;
  e.key = *std::move(aead);
  e.created = stored->created;
  e.cryptoperiod_end = stored->cryptoperiod_end;
  absl::MutexLock lock(&mu_);
  keys_.emplace(next, std::move(e));
  primary_ = next;
  if (made_here != nullptr) *made_here = true;
  return next;
}

void KeyRing::RecordPass(const std::map<uint32_t, uint64_t>& records,
                         std::optional<absl::Time> started) const {
  const absl::Time began = started.value_or(options_.now());
  absl::MutexLock lock(&mu_);
  for (auto it = keys_.begin(); it != keys_.end(); ++it) {
    auto& [version, e] = *it;
    if (e.destroyed) continue;
    auto counted = records.find(version);
    const int64_t n =
        counted == records.end() ? 0 : static_cast<int64_t>(counted->second);
    // A key replaced too shortly before the pass began may still gain
    // records from a node that has not switched: not counted as empty.
    auto successor = std::next(it);
    if (n == 0 && version != primary_ && successor != keys_.end() &&
        began < successor->second.created + options_.retire_grace) {
      e.records = -1;
      continue;
    }
    e.records = n;
  }
}

KeyState KeyRing::StateOf(uint32_t version, const Entry& e) const {
  if (e.destroyed) return KeyState::kDestroyed;
  if (version == primary_) return KeyState::kActive;
  return e.records == 0 ? KeyState::kRetired : KeyState::kDecryptOnly;
}

absl::Status KeyRing::Destroy(uint32_t version) const {
  if (kek_ == nullptr) {
    return absl::FailedPreconditionError("this key ring cannot destroy keys");
  }
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = keys_.find(version);
    if (it == keys_.end() ||
        StateOf(version, it->second) != KeyState::kRetired ||
        it->second.leases > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("data key ", DataKeyId(version),
                       " is not retired (records may still use it)"));
    }
  }
  // The stored record, not the one loaded: a KEK rotation rewraps it.
  absl::StatusOr<std::string> record = kek_->keys()->GetKey(DataKeyId(version));
  if (!record.ok()) return record.status();
  const std::string tombstone = DestroyedKeyRecord(version, options_.now());
  if (absl::Status s =
          kek_->keys()->ReplaceKey(DataKeyId(version), *record, tombstone);
      !s.ok()) {
    return s;
  }
  absl::MutexLock lock(&mu_);
  Entry& e = keys_.at(version);
  e.key.reset();  // the last owner wipes the key (SecretBytes)
  e.destroyed = true;
  return absl::OkStatus();
}

std::vector<KeyInfo> KeyRing::Inventory() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<KeyInfo> out;
  for (const auto& [version, e] : keys_) {
    KeyInfo info;
    info.id = DataKeyId(version);
    info.version = version;
    info.purpose = "card data";
    info.algorithm =
        options_.keys_in_hsm ? "AES-256-GCM, in the HSM" : "AES-256-GCM";
    info.state = StateOf(version, e);
    info.created = e.created;
    info.cryptoperiod_end = e.cryptoperiod_end;
    info.encryptions = e.encryptions;
    info.new_records = e.new_records;
    info.records = e.records;
    out.push_back(std::move(info));
  }
  return out;
}

std::vector<uint32_t> KeyRing::DecryptOnlyVersions() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<uint32_t> out;
  for (const auto& [version, e] : keys_) {
    if (!e.destroyed && version != primary_) out.push_back(version);
  }
  return out;
}

size_t KeyRing::size() const {
  absl::ReaderMutexLock lock(&mu_);
  size_t n = 0;
  for (const auto& [version, e] : keys_) n += !e.destroyed;
  return n;
}

}  // namespace cardvault::vault
