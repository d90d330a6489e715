// The auditors' use cases: reading the audit trail by filter, and verifying
// its chain. Each read is itself recorded before anything is read (PCI DSS
// 10.2.1.3), and needs the auditor role.
//
// Thread safety: thread-safe.
#ifndef CARDVAULT_SERVER_VAULT_AUDIT_READER_H_
#define CARDVAULT_SERVER_VAULT_AUDIT_READER_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/audit/audit_chain.h"
#include "server/auth/access_policy.h"
#include "server/commit/write_path.h"
#include "server/storage/token_store.h"
#include "server/vault/call_recorder.h"

namespace cardvault::vault {

inline constexpr char kListEventsRpc[] = "/cardvault.v1.AuditLog/ListEvents";
inline constexpr char kVerifyChainRpc[] = "/cardvault.v1.AuditLog/VerifyChain";

// Which audit events an auditor asks for; empty fields match everything.
struct AuditFilter {
  std::optional<absl::Time> start_time;  // inclusive
  std::optional<absl::Time> end_time;    // exclusive
  std::string identity;
  ::cardvault::v1::EventType event_type =
      ::cardvault::v1::EVENT_TYPE_UNSPECIFIED;
  std::string token;
  uint32_t max_events = 0;  // 0 = no limit
};

class AuditReader {
 public:
  // Every pointer must outlive the reader. `records` answers whether a
  // token filter names a stored token (how the read's record may hold it).
  AuditReader(const CallRecorder* recorder, const auth::PolicyHolder* policy,
              const commit::WritePath* trail,
              const storage::RecordStore* records)
      : recorder_(recorder),
        policy_(policy),
        trail_(trail),
        records_(records) {}

  // Streams matching events to `visit` (stop by returning false).
  absl::Status ListAuditEvents(
      const auth::Caller& caller, const AuditFilter& filter,
      const std::function<bool(const audit::AuditEvent&)>& visit) const;

  // Verifies the chain (against `checkpoint`, when given).
  absl::StatusOr<audit::ChainReport> VerifyAuditChain(
      const auth::Caller& caller,
      const std::optional<audit::Checkpoint>& checkpoint) const;

 private:
  const CallRecorder* const recorder_;
  const auth::PolicyHolder* const policy_;
  const commit::WritePath* const trail_;
  const storage::RecordStore* const records_;
};

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_AUDIT_READER_H_
