#include "server/auth/access_policy.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace cardvault::auth {
namespace {

uint32_t Bit(Permission p) { return 1u << static_cast<int>(p); }

// The least privilege of each role: auditors read the trail, card metadata
// and the key inventory but never a PAN; admins manage keys and touch no
// card data at all.
uint32_t GrantsOf(Role role) {
  switch (role) {
    case Role::kTokenizer:
      return Bit(Permission::kTokenize) | Bit(Permission::kReadTokenInfo) |
             Bit(Permission::kDeleteToken);
    case Role::kDetokenizer:
      return Bit(Permission::kDetokenize);
    case Role::kAuditor:
      return Bit(Permission::kReadAudit) | Bit(Permission::kReadTokenInfo) |
             Bit(Permission::kReadKeyInventory);
    case Role::kAdmin:
      return Bit(Permission::kReadKeyInventory) |
             Bit(Permission::kAdministerKeys) |
             Bit(Permission::kAdministerBackups);
    case Role::kNode:
      // Nothing a client may do: a node's certificate opens no card data.
      return Bit(Permission::kTakeHeldCvv);
  }
  return 0;
}

bool IsSegmentChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

bool IsValidPurpose(absl::string_view p) {
  return !p.empty() && p.size() <= kMaxPurposeBytes &&
         std::all_of(p.begin(), p.end(),
                     [](char c) { return IsSegmentChar(c); });
}

}  // namespace

bool IsValidDomain(absl::string_view domain) {
  if (domain.empty() || domain.size() > kMaxDomainBytes) return false;
  for (absl::string_view segment : absl::StrSplit(domain, '/')) {
    if (segment.empty() ||
        !std::all_of(segment.begin(), segment.end(), IsSegmentChar)) {
      return false;
    }
  }
  return true;
}

bool IsValidIdentity(absl::string_view identity) {
  if (identity.empty() || identity.size() > kMaxIdentityBytes) return false;
  const bool common_name = absl::StartsWith(identity, kCommonNamePrefix);
  if (identity.front() == ' ' || identity.back() == ' ') return false;
  return std::all_of(identity.begin(), identity.end(), [&](char c) {
    return (c > 0x20 && c < 0x7f) || (common_name && c == ' ');
  });
}

absl::string_view PermissionName(Permission permission) {
  switch (permission) {
    case Permission::kTokenize:
      return "Tokenize";
    case Permission::kDetokenize:
      return "Detokenize";
    case Permission::kReadAudit:
      return "read the audit trail";
    case Permission::kReadTokenInfo:
      return "GetTokenInfo";
    case Permission::kDeleteToken:
      return "DeleteToken";
    case Permission::kReadKeyInventory:
      return "read the key inventory";
    case Permission::kAdministerKeys:
      return "administer keys";
    case Permission::kAdministerBackups:
      return "administer backups";
    case Permission::kTakeHeldCvv:
      return "take a CVV another node holds";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<AccessPolicy>> AccessPolicy::Create(
    const PolicySpec& spec) {
  absl::flat_hash_map<std::string, Grant> grants;
  auto bad = [](absl::string_view who, absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy binding for ", who, ": ", what));
  };
  for (const RoleBinding& b : spec.bindings) {
    if (b.identity.empty()) {
      return absl::InvalidArgumentError("policy binding has an empty identity");
    }
    if (!IsValidIdentity(b.identity)) {
      return absl::InvalidArgumentError(
          "policy binding identity must be 1-255 bytes of printable ASCII");
    }
    if (b.roles.empty()) return bad(b.identity, "no role");
    Grant grant;
    for (Role r : b.roles) grant.permissions |= GrantsOf(r);
    for (const std::string& d : b.tokenize_domains) {
      if (!IsValidDomain(d)) return bad(b.identity, "malformed token domain");
    }
    for (const std::string& d : b.detokenize_domains) {
      if (!IsValidDomain(d)) return bad(b.identity, "malformed token domain");
    }
    if ((grant.permissions & Bit(Permission::kTokenize)) &&
        b.tokenize_domains.empty()) {
      return bad(b.identity, "a tokenizer needs tokenize_domains");
    }
    if ((grant.permissions & Bit(Permission::kDetokenize)) &&
        b.detokenize_domains.empty()) {
      return bad(b.identity, "a detokenizer needs detokenize_domains");
    }
    grant.tokenize_domains = b.tokenize_domains;
    grant.detokenize_domains.insert(b.detokenize_domains.begin(),
                                    b.detokenize_domains.end());
    grant.detokenize_limit = b.detokenize_limit;
    if (!grants.emplace(b.identity, std::move(grant)).second) {
      return bad(b.identity, "identity is bound twice");
    }
  }
  absl::flat_hash_map<std::string, DomainSettings> domains;
  for (const DomainSettings& d : spec.domains) {
    if (!IsValidDomain(d.name)) {
      return absl::InvalidArgumentError("policy domains: malformed name");
    }
    if (d.bin_digits != 6 && d.bin_digits != 8) {
      return absl::InvalidArgumentError(absl::StrCat(
          "policy domain ", d.name, ": bin_digits must be 6 or 8"));
    }
    if (d.max_ttl < absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("policy domain ", d.name, ": negative max_ttl"));
    }
    if (!domains.emplace(d.name, d).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("policy domain ", d.name, " is configured twice"));
    }
  }
  if (spec.purposes.empty()) {
    return absl::InvalidArgumentError("policy lists no Detokenize purposes");
  }
  absl::flat_hash_set<std::string> purposes;
  for (const std::string& p : spec.purposes) {
    if (!IsValidPurpose(p)) {
      return absl::InvalidArgumentError(
          "policy purpose must be 1-32 characters of [a-z0-9._-]");
    }
    purposes.insert(p);
  }
  absl::flat_hash_set<std::string> cvv_purposes;
  for (const std::string& p : spec.cvv_purposes) {
    if (!purposes.contains(p)) {
      return absl::InvalidArgumentError(
          "policy cvv_purposes must be listed in purposes");
    }
    cvv_purposes.insert(p);
  }
  absl::flat_hash_set<std::string> known_domains;
  for (const auto& [name, settings] : domains) known_domains.insert(name);
  for (const auto& [identity, grant] : grants) {
    known_domains.insert(grant.tokenize_domains.begin(),
                         grant.tokenize_domains.end());
    known_domains.insert(grant.detokenize_domains.begin(),
                         grant.detokenize_domains.end());
  }
  return std::unique_ptr<AccessPolicy>(new AccessPolicy(
      std::move(grants), std::move(domains), std::move(known_domains),
      std::move(purposes), std::move(cvv_purposes),
      spec.allow_common_name_identities));
}

const AccessPolicy::Grant* AccessPolicy::Find(const Caller& caller) const {
  if (caller.identity.empty()) return nullptr;
  // A CN identity matches only a "cn:" binding, a URI only a URI binding.
  if (caller.identity_is_common_name !=
      absl::StartsWith(caller.identity, kCommonNamePrefix)) {
    return nullptr;
  }
  if (caller.identity_is_common_name && !allow_common_name_identities_) {
    return nullptr;
  }
  auto it = grants_.find(caller.identity);
  return it == grants_.end() ? nullptr : &it->second;
}

absl::Status AccessPolicy::Check(const Caller& caller,
                                 Permission permission) const {
  const Grant* grant = Find(caller);
  if (grant == nullptr || (grant->permissions & Bit(permission)) == 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("caller may not ", PermissionName(permission)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> AccessPolicy::TokenizeDomain(
    const Caller& caller, absl::string_view requested) const {
  const Grant* grant = Find(caller);
  if (grant == nullptr || grant->tokenize_domains.empty()) {
    return absl::PermissionDeniedError("caller may not Tokenize");
  }
  if (requested.empty()) return grant->tokenize_domains.front();
  for (const std::string& d : grant->tokenize_domains) {
    if (d == requested) return d;
  }
  return absl::PermissionDeniedError(
      "caller may not tokenize into the requested domain");
}

bool AccessPolicy::MayDetokenize(const Caller& caller,
                                 absl::string_view domain) const {
  const Grant* grant = Find(caller);
  return grant != nullptr && grant->detokenize_domains.contains(domain);
}

bool AccessPolicy::InTokenizeDomains(const Grant& grant,
                                     absl::string_view domain) const {
  return std::find(grant.tokenize_domains.begin(), grant.tokenize_domains.end(),
                   domain) != grant.tokenize_domains.end();
}

bool AccessPolicy::MayReadTokenInfo(const Caller& caller,
                                    absl::string_view domain) const {
  const Grant* grant = Find(caller);
  if (grant == nullptr ||
      (grant->permissions & Bit(Permission::kReadTokenInfo)) == 0) {
    return false;
  }
  return (grant->permissions & Bit(Permission::kReadAudit)) != 0 ||
         InTokenizeDomains(*grant, domain);
}

bool AccessPolicy::MayDeleteToken(const Caller& caller,
                                  absl::string_view domain) const {
  const Grant* grant = Find(caller);
  return grant != nullptr &&
         (grant->permissions & Bit(Permission::kDeleteToken)) != 0 &&
         InTokenizeDomains(*grant, domain);
}

const DomainSettings& AccessPolicy::SettingsOf(absl::string_view domain) const {
  auto it = domains_.find(domain);
  return it == domains_.end() ? default_settings_ : it->second;
}

absl::Status AccessPolicy::CheckPurpose(absl::string_view purpose) const {
  if (!purposes_.contains(purpose)) {
    return absl::InvalidArgumentError(
        "purpose is required and must be one of the configured purposes");
  }
  return absl::OkStatus();
}

RateLimit AccessPolicy::DetokenizeLimit(const Caller& caller) const {
  const Grant* grant = Find(caller);
  return grant == nullptr ? RateLimit{} : grant->detokenize_limit;
}

std::string AccessPolicy::ChangesFrom(const AccessPolicy& before) const {
  std::vector<std::string> added, removed, changed;
  for (const auto& [identity, grant] : grants_) {
    auto it = before.grants_.find(identity);
    if (it == before.grants_.end()) {
      added.push_back(identity);
    } else if (!(it->second == grant)) {
      changed.push_back(identity);
    }
  }
  for (const auto& [identity, grant] : before.grants_) {
    if (!grants_.contains(identity)) removed.push_back(identity);
  }
  std::vector<std::string> parts;
  for (auto& [what, list] : {std::pair{"bindings added: ", &added},
                             std::pair{"bindings removed: ", &removed},
                             std::pair{"bindings changed: ", &changed}}) {
    if (list->empty()) continue;
    std::sort(list->begin(), list->end());
    parts.push_back(absl::StrCat(what, absl::StrJoin(*list, ", ")));
  }
  if (purposes_ != before.purposes_) parts.push_back("purposes changed");
  if (cvv_purposes_ != before.cvv_purposes_) {
    parts.push_back("cvv_purposes changed");
  }
  bool domains_changed = domains_.size() != before.domains_.size();
  for (const auto& [name, d] : domains_) {
    auto it = before.domains_.find(name);
    domains_changed = domains_changed || it == before.domains_.end() ||
                      it->second.deterministic != d.deterministic ||
                      it->second.max_ttl != d.max_ttl ||
                      it->second.bin_digits != d.bin_digits;
  }
  if (domains_changed) parts.push_back("domain settings changed");
  if (allow_common_name_identities_ != before.allow_common_name_identities_) {
    parts.push_back(absl::StrCat("allow_common_name_identities ",
                                 allow_common_name_identities_ ? "on" : "off"));
  }
  return parts.empty() ? "no change in force" : absl::StrJoin(parts, "; ");
}

uint64_t DayBlock(uint32_t per_day) {
  return std::clamp<uint64_t>(per_day / kDayBlockDivisor, 1, kMaxDayBlock);
}

RateLimiter::Window& RateLimiter::WindowOf(absl::string_view identity,
                                           int64_t day) {
  Window& w = windows_[identity];
  if (w.day != day) {
    w.day = day, w.in_day = 0, w.reserved = 0, w.exhausted_under = 0;
  }
  return w;
}

absl::Status RateLimiter::Check(Window& w, const RateLimit& limit,
                                absl::Time now, bool shared) {
  const double per_second = limit.per_second;
  if ((per_second != 0 && w.second.Refill(now, per_second, per_second) < 1) ||
      (limit.per_day != 0 && w.in_day >= limit.per_day) ||
      (shared && w.reserved == 0 && w.exhausted_under != 0 &&
       limit.per_day <= w.exhausted_under)) {
    return absl::ResourceExhaustedError("Detokenize rate limit reached");
  }
  return absl::OkStatus();
}

void RateLimiter::Take(Window& w, const RateLimit& limit, bool shared) {
  if (limit.per_second != 0) w.second.Take();
  ++w.in_day;
  if (shared) --w.reserved;
}

absl::Status RateLimiter::Admit(absl::string_view identity,
                                const RateLimit& limit, absl::Time now) {
  if (limit.per_second == 0 && limit.per_day == 0) return absl::OkStatus();
  const int64_t day = absl::ToUnixSeconds(now) / 86400;
  const bool shared = reserve_ != nullptr && limit.per_day != 0;
  std::shared_ptr<absl::Mutex> reserving;
  {
    absl::MutexLock lock(&mu_);
    Window& w = WindowOf(identity, day);
    if (absl::Status s = Check(w, limit, now, shared); !s.ok()) return s;
    if (!shared || w.reserved > 0) {
      Take(w, limit, shared);
      return absl::OkStatus();
    }
    if (w.reserving == nullptr) w.reserving = std::make_shared<absl::Mutex>();
    reserving = w.reserving;
  }
  // No use reserved here: one thread per identity reserves a block, the
  // others wait and use it. Never with mu_ held (a store round trip).
  absl::MutexLock one(reserving.get());
  {
    absl::MutexLock lock(&mu_);
    Window& w = WindowOf(identity, day);
    if (absl::Status s = Check(w, limit, now, shared); !s.ok()) return s;
    if (w.reserved > 0) {
      Take(w, limit, shared);
      return absl::OkStatus();
    }
  }
  absl::StatusOr<uint64_t> granted =
      reserve_(identity, day, DayBlock(limit.per_day), limit.per_day);
  if (absl::IsResourceExhausted(granted.status())) {
    absl::MutexLock lock(&mu_);
    WindowOf(identity, day).exhausted_under = limit.per_day;
    return absl::ResourceExhaustedError("Detokenize rate limit reached");
  }
  if (!granted.ok() || *granted == 0) {
    return absl::UnavailableError(
        "Detokenize uses of the daily limit could not be reserved");
  }
  absl::MutexLock lock(&mu_);
  Window& w = WindowOf(identity, day);
  w.reserved += *granted;
  // The bucket may have emptied meanwhile; the block stays for later calls.
  if (absl::Status s = Check(w, limit, now, shared); !s.ok()) return s;
  Take(w, limit, shared);
  return absl::OkStatus();
}

void RateLimiter::Seed(absl::string_view identity, int64_t day,
                       uint64_t count) {
  absl::MutexLock lock(&mu_);
  WindowOf(identity, day).in_day += count;
}

void RateLimiter::SeedFromCounters(
    const std::map<std::string, uint64_t>& counters, absl::Time now) {
  const int64_t day = absl::ToUnixSeconds(now) / 86400;
  const std::string today = DayCounterId(day, "");
  for (auto it = counters.lower_bound(today);
       it != counters.end() && absl::StartsWith(it->first, today); ++it) {
    Seed(absl::string_view(it->first).substr(today.size()), day, it->second);
  }
}

std::string DayCounterId(int64_t day, absl::string_view identity) {
  return absl::StrCat(kDayCounterPrefix, day, "/", identity);
}

}  // namespace cardvault::auth
