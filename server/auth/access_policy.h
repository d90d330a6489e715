// Who may do what: client identities mapped to roles and token domains,
// detokenization purposes and velocity limits. Deny by default.
//
// Thread safety: AccessPolicy is immutable after Create and thread-safe;
// PolicyHolder and RateLimiter are thread-safe.
#ifndef CARDVAULT_SERVER_AUTH_ACCESS_POLICY_H_
#define CARDVAULT_SERVER_AUTH_ACCESS_POLICY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/util/token_bucket.h"

namespace cardvault::auth {

enum class Role { kTokenizer, kDetokenizer, kAuditor, kAdmin, kNode };

// One right per kind of access.
enum class Permission {
  kTokenize,
  kDetokenize,
  kReadAudit,
  kReadTokenInfo,  // card metadata (never the PAN) by token
  kDeleteToken,
  kReadKeyInventory,   // key states and use, never key material
  kAdministerKeys,     // rotate, propose and approve key operations
  kAdministerBackups,  // take, list, verify and delete backups
  kTakeHeldCvv,        // another node takes a CVV this node holds
};

absl::string_view PermissionName(Permission permission);

inline constexpr size_t kMaxDomainBytes = 64;
inline constexpr size_t kMaxPurposeBytes = 32;
inline constexpr size_t kMaxIdentityBytes = 255;
// Identities taken from a certificate's subject CN start with this; a URI
// SAN that does is refused, so the two namespaces never meet.
inline constexpr absl::string_view kCommonNamePrefix = "cn:";

// True for "segment(/segment)*", segments of [a-z0-9._-], at most 64 bytes.
bool IsValidDomain(absl::string_view domain);

// True for 1-255 bytes of printable ASCII (0x21-0x7e, and inner spaces in a
// "cn:" identity): what a policy binding may name.
bool IsValidIdentity(absl::string_view identity);

// The authenticated caller of one request, from its verified certificate,
// and what identifies the request in the audit trail.
struct Caller {
  std::string identity;  // URI SAN (SPIFFE ID), or "cn:" + subject CN
  bool identity_is_common_name = false;
  std::string certificate_serial;  // uppercase hex
  std::string certificate_sha256;  // lowercase hex of the DER's SHA-256
  std::string peer;                // transport address
  std::string request_id;          // unique per server process
};

struct RateLimit {
  uint32_t per_second = 0;  // 0 = unlimited
  uint32_t per_day = 0;     // per UTC day; 0 = unlimited
};

struct RoleBinding {
  std::string identity;
  std::vector<Role> roles;
  std::vector<std::string> tokenize_domains;  // first = default
  std::vector<std::string> detokenize_domains;
  RateLimit detokenize_limit;
};

// How tokens of one domain are made and kept.
struct DomainSettings {
  std::string name;
  // Every Tokenize into the domain is deterministic (same PAN, same token).
  bool deterministic = false;
  // Longest time to live a token may have; zero = unlimited. Tokens asked
  // for without a TTL get this one.
  absl::Duration max_ttl = absl::ZeroDuration();
  // Leading PAN digits a BIN_LAST_FOUR token and GetTokenInfo keep: 6, or 8
  // (for PANs of 16 or more digits, as PCI DSS 3.4.1 allows).
  uint32_t bin_digits = 6;
};

struct PolicySpec {
  std::vector<RoleBinding> bindings;
  std::vector<DomainSettings> domains;
  std::vector<std::string> purposes;
  // Purposes whose Detokenize also receives a CVV held for the token; a
  // subset of `purposes`. Empty: no purpose does (the CVV stays held until
  // its TTL).
  std::vector<std::string> cvv_purposes;
  bool allow_common_name_identities = false;
};

class AccessPolicy {
 public:
  // INVALID_ARGUMENT (naming the binding) for an empty or repeated identity,
  // a binding without roles, a tokenizer without tokenize domains, a
  // detokenizer without detokenize domains, a malformed domain or purpose,
  // or no purposes at all.
  static absl::StatusOr<std::unique_ptr<AccessPolicy>> Create(
      const PolicySpec& spec);

  // OK if one of the caller's roles grants `permission`; otherwise
  // PERMISSION_DENIED (also for identities the policy does not name, and for
  // CN identities unless the policy allows them).
  absl::Status Check(const Caller& caller, Permission permission) const;

  // The domain a Tokenize goes into: `requested` if the caller may tokenize
  // into it, its default when `requested` is empty; else PERMISSION_DENIED.
  absl::StatusOr<std::string> TokenizeDomain(const Caller& caller,
                                             absl::string_view requested) const;

  // Whether the caller may detokenize tokens of `domain`.
  bool MayDetokenize(const Caller& caller, absl::string_view domain) const;

  // Whether the caller may read metadata of, or delete, tokens of `domain`:
  // a tokenizer for its own tokenize domains; for reading, an auditor for
  // every domain.
  bool MayReadTokenInfo(const Caller& caller, absl::string_view domain) const;
  bool MayDeleteToken(const Caller& caller, absl::string_view domain) const;

  // The settings of `domain` (defaults for a domain the policy does not
  // configure).
  const DomainSettings& SettingsOf(absl::string_view domain) const;

  // INVALID_ARGUMENT unless `purpose` is one of the configured purposes.
  absl::Status CheckPurpose(absl::string_view purpose) const;

  // Whether a Detokenize for `purpose` may receive the CVV held for its
  // token.
  bool ReleasesCvvFor(absl::string_view purpose) const {
    return cvv_purposes_.contains(purpose);
  }

  // What the audit trail may record as itself (recorded_value.h): an
  // identity the policy binds (and would accept), a domain some binding or
  // domain setting names, a configured purpose.
  bool Names(const Caller& caller) const { return Find(caller) != nullptr; }
  bool Binds(absl::string_view identity) const {
    return grants_.contains(identity);
  }
  bool KnowsDomain(absl::string_view domain) const {
    return known_domains_.contains(domain);
  }
  bool KnowsPurpose(absl::string_view purpose) const {
    return purposes_.contains(purpose);
  }

  // The caller's Detokenize velocity limit.
  RateLimit DetokenizeLimit(const Caller& caller) const;

  // What changed from `before` to this policy, for the POLICY_RELOAD record:
  // "bindings added: A, B; removed: C; changed: D; purposes changed; ...",
  // or "no change in force" (identities are printable ASCII by Create).
  std::string ChangesFrom(const AccessPolicy& before) const;

 private:
  struct Grant {
    uint32_t permissions = 0;
    std::vector<std::string> tokenize_domains;
    absl::flat_hash_set<std::string> detokenize_domains;
    RateLimit detokenize_limit;
    bool operator==(const Grant& o) const {
      return permissions == o.permissions &&
             tokenize_domains == o.tokenize_domains &&
             detokenize_domains == o.detokenize_domains &&
             detokenize_limit.per_second == o.detokenize_limit.per_second &&
             detokenize_limit.per_day == o.detokenize_limit.per_day;
    }
  };
  AccessPolicy(absl::flat_hash_map<std::string, Grant> grants,
               absl::flat_hash_map<std::string, DomainSettings> domains,
               absl::flat_hash_set<std::string> known_domains,
               absl::flat_hash_set<std::string> purposes,
               absl::flat_hash_set<std::string> cvv_purposes, bool allow_cn)
      : grants_(std::move(grants)),
        domains_(std::move(domains)),
        known_domains_(std::move(known_domains)),
        purposes_(std::move(purposes)),
        cvv_purposes_(std::move(cvv_purposes)),
        allow_common_name_identities_(allow_cn) {}
  const Grant* Find(const Caller& caller) const;
  bool InTokenizeDomains(const Grant& grant, absl::string_view domain) const;

  const absl::flat_hash_map<std::string, Grant> grants_;
  const absl::flat_hash_map<std::string, DomainSettings> domains_;
  const absl::flat_hash_set<std::string> known_domains_;
  const DomainSettings default_settings_;
  const absl::flat_hash_set<std::string> purposes_;
  const absl::flat_hash_set<std::string> cvv_purposes_;
  const bool allow_common_name_identities_;
};

// The policy in force, swapped atomically when the policy file changes.
class PolicyHolder {
 public:
  explicit PolicyHolder(std::shared_ptr<const AccessPolicy> initial)
      : current_(std::move(initial)) {}
  std::shared_ptr<const AccessPolicy> Current() const {
    absl::MutexLock lock(&mu_);
    return current_;
  }
  void Replace(std::shared_ptr<const AccessPolicy> policy) {
    absl::MutexLock lock(&mu_);
    current_ = std::move(policy);
  }

 private:
  mutable absl::Mutex mu_;
  std::shared_ptr<const AccessPolicy> current_ ABSL_GUARDED_BY(mu_);
};

// Per-identity velocity limits, the control against an insider bulk-
// exporting cards: a token bucket of `per_second` calls refilled
// continuously (no window edge lets twice the rate through), and a count
// per UTC day. The day counts of a running vault are also written durably
// with each Detokenize's record (DayCounterId), and Seed gives them back at
// start, so a restart does not reset them.
//
// Several nodes on one store (docs/multinode.md): a limiter given a
// DayReserver makes each daily limit hold for all nodes together. A call
// counted against a daily limit is admitted only with a use this node has
// reserved for (identity, UTC day) in the shared store; when it has none
// left, it reserves a block of DayBlock(per_day) = per_day / 32, at least 1
// and at most 256, under the limit for all nodes together (one thread per
// identity reserves, the others wait for its block). How exact:
//   - Never more than per_day calls of an identity in one UTC day, all
//     nodes together: a node admits only uses it reserved, and the store
//     hands out no more than per_day (coordination/use_reservations.h).
//     A limit lowered during the day is held to within the uses nodes had
//     already reserved under the old one (at most nodes x block).
//   - A caller may be refused early, before per_day calls, by at most
//     (nodes - 1) x block uses that other nodes hold reserved and unused
//     (a node uses its own block up before reserving again), plus the
//     unused uses of blocks reserved that day by nodes that stopped or died
//     (a restarted node starts with none; at most one block per node
//     start). With two nodes and a limit of 1,000 (block 31): at least 969.
//     Limits of 63 or less have blocks of 1: every counted call is then a
//     store round trip, and the bound is nodes - 1 calls.
//   - A UTC day is each node's clock's: clock skew between nodes moves the
//     boundary by as much on each node.
//   - A store failure while reserving fails the call closed: UNAVAILABLE,
//     nothing admitted (the caller's audit record says so).
//   - Once the store has no use left, the node refuses that identity's
//     calls for the rest of the day without asking it again (unless a
//     policy reload raises the limit).
// The per-second token bucket stays per node: behind a balancer spreading
// calls over k nodes a caller can reach k x per_second. It is a brake on
// bursts; the daily limit is the bound on bulk export, and that one is
// cluster-wide.
class RateLimiter {
 public:
  // Reserves up to `wanted` more uses (at least 1) of `identity`'s calls on
  // UTC day `day` (days since the epoch) for this node, as many as are left
  // under `limit` for all nodes together: the number reserved;
  // RESOURCE_EXHAUSTED when none are left; any other error when the store
  // could not reserve (nothing reserved).
  using DayReserver = std::function<absl::StatusOr<uint64_t>(
      absl::string_view identity, int64_t day, uint64_t wanted,
      uint64_t limit)>;

  // Without `reserve`, day counts are this process's alone (one node).
  explicit RateLimiter(DayReserver reserve = nullptr)
      : reserve_(std::move(reserve)) {}

  // Counts one call of `identity` at `now`; RESOURCE_EXHAUSTED (and not
  // counted) when it would exceed `limit`; with a DayReserver, UNAVAILABLE
  // (not counted) when no use could be reserved for it.
  absl::Status Admit(absl::string_view identity, const RateLimit& limit,
                     absl::Time now);

  // `count` calls of `identity` already made on UTC day `day` (days since
  // the epoch), e.g. as stored before a restart.
  void Seed(absl::string_view identity, int64_t day, uint64_t count);

  // Seeds today's counts (the day of `now`) from stored counters
  // (DayCounterId -> count); other counters are ignored.
  void SeedFromCounters(const std::map<std::string, uint64_t>& counters,
                        absl::Time now);

 private:
  struct Window {
    util::TokenBucket second;
    int64_t day = 0;
    uint64_t in_day = 0;
    // Uses of `day` this node reserved and has not used (DayReserver).
    uint64_t reserved = 0;
    // The daily limit under which the store had no use left for `day`
    // (0: none such): calls refused without asking again, until a policy
    // raises the limit.
    uint64_t exhausted_under = 0;
    // Held by the one thread reserving a block for this identity.
    std::shared_ptr<absl::Mutex> reserving;
  };
  // The window of `identity`, moved to `day` if it was on another.
  Window& WindowOf(absl::string_view identity, int64_t day)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK if `w` admits one more call under `limit`, a use reserved aside
  // (`shared`: unless the store had none left under this limit).
  static absl::Status Check(Window& w, const RateLimit& limit, absl::Time now,
                            bool shared);
  // Counts one call in `w`, taking a reserved use if `shared`.
  static void Take(Window& w, const RateLimit& limit, bool shared);

  const DayReserver reserve_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Window> windows_ ABSL_GUARDED_BY(mu_);
};

// Uses a node reserves at once against a daily limit of `per_day`
// (RateLimiter): per_day / kDayBlockDivisor, at least 1, at most
// kMaxDayBlock. Small against the limit, so the calls other nodes hold
// reserved and unused (the early-refusal bound) are a thirty-second of it
// per node at most; large enough that a busy identity costs the store one
// reservation per block, not one per call.
inline constexpr uint64_t kDayBlockDivisor = 32;
inline constexpr uint64_t kMaxDayBlock = 256;
uint64_t DayBlock(uint32_t per_day);

// The durable counter of `identity`'s calls on UTC day `day`:
// "velocity/<day>/<identity>" (storage counters, token_store.h).
std::string DayCounterId(int64_t day, absl::string_view identity);
inline constexpr absl::string_view kDayCounterPrefix = "velocity/";

}  // namespace cardvault::auth

#endif  // CARDVAULT_SERVER_AUTH_ACCESS_POLICY_H_
