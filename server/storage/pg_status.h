// The one place a libpq error becomes an absl::Status.
//
// Messages never carry values. PostgreSQL's own texts can echo them (a
// unique violation's DETAIL "Key (k)=(\x...) already exists", "invalid input
// syntax for type bigint: "4111..."", a CONTEXT line with a PL/pgSQL
// variable, a RAISE's message), so no text of the server is used, not even
// the primary message: a server error becomes
//   "<operation> failed: SQLSTATE 23505 (unique_violation), constraint
//   tokens_pkey, schema public, table tokens"
// that is, the operation, the SQLSTATE, its condition name, and the fields
// that name schema objects (constraint, schema, table, column, type) and the
// position in our SQL text ("at character 17", for syntax errors), which are
// identifiers and numbers, never values. Errors libpq makes itself (no
// SQLSTATE: the connection was lost, a send failed) keep libpq's text, which
// describes the connection, without any server report lines in it.
//
// Payloads: the native SQLSTATE under kSqlStateTypeUrl (the five
// characters, e.g. "40001"; SqlStateOf), and the violated constraint's name
// under kConstraintTypeUrl when the server names one (ConstraintOf): which
// unique index refused a write tells which condition failed.
//
// SQLSTATE -> code (the most specific absl code that tells the caller what
// to do; CodeForSqlState):
//   40001 serialization_failure, 40P01 deadlock_detected, other class 40,
//   55P03 lock_not_available, 72000 snapshot_too_old, 26000
//   invalid_sql_statement_name (the session lost its prepared statements;
//   pg_connection.h prepares them again)
//       -> ABORTED: the transaction was rolled back; retry it whole.
//   40002 transaction_integrity_constraint_violation, class 23 but 23505
//       -> FAILED_PRECONDITION: a constraint refused the write.
//   23505 unique_violation -> ALREADY_EXISTS.
//   40003 statement_completion_unknown, 08007 transaction_resolution_unknown
//       -> UNKNOWN: the commit may or may not have happened; read back.
//   57014 query_canceled (statement_timeout or a cancel request) -> UNKNOWN.
//       PostgreSQL rolls back a cancelled statement, but this layer does not
//       know whether the cancelled statement was a COMMIT, and engines on the
//       same wire protocol do not all promise that a cancelled commit did not
//       happen; reading back is always safe, guessing is not.
//   class 08 connection exception (but 08007), 57P01 admin_shutdown, 57P02
//   crash_shutdown, 57P03 cannot_connect_now, 57P05 idle_session_timeout,
//   57000, class 53 insufficient resources, 58030 io_error, 25006
//   read_only_sql_transaction (we reached a standby, e.g. after a failover),
//   25P03 idle_in_transaction_session_timeout, no SQLSTATE (libpq's own
//   error: connection lost)
//       -> UNAVAILABLE: reconnect and retry. When the statement in flight was
//       a COMMIT (or ended an implicit transaction), its outcome is unknown:
//       read back before retrying.
//   class 42 (bug in our SQL; also 42501 insufficient_privilege, a grant
//   missing for the vault's database role: PERMISSION_DENIED would tell a
//   gRPC caller that they lack a permission), class 54 program limits (the
//   store must bound key sizes and parameter counts), 22P03
//   invalid_binary_representation and 2202E array_subscript_error (our binary
//   encoding), class P0, XX000, anything unlisted -> INTERNAL.
//   other class 22 data exceptions (a value does not fit its column: too
//       long, not UTF-8, out of range) -> INVALID_ARGUMENT: the value came
//       from outside and a retry will not help; the store should validate
//       first, this is the backstop.
//   25P02 in_failed_sql_transaction -> FAILED_PRECONDITION: roll back first.
//   57P04 database_dropped, class 55 but 55P03 -> FAILED_PRECONDITION.
//   0A000 feature_not_supported -> UNIMPLEMENTED (e.g. SQL another engine on
//       the wire protocol lacks).
//   class 28 invalid authorization -> UNAUTHENTICATED.
//   XX001 data_corrupted, XX002 index_corrupted -> DATA_LOSS.
//
// Thread safety: every function is pure and may be called from any thread;
// libpq allows reading a PGresult from any thread, and FromPgConnection reads
// a connection that the caller must not be using concurrently.
#ifndef CARDVAULT_SERVER_STORAGE_PG_STATUS_H_
#define CARDVAULT_SERVER_STORAGE_PG_STATUS_H_

#include <libpq-fe.h>

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace cardvault::storage {

// Payload type URLs: the SQLSTATE (five ASCII characters), the constraint.
inline constexpr char kSqlStateTypeUrl[] = "type.cardvault/sqlstate";
inline constexpr char kConstraintTypeUrl[] = "type.cardvault/pg-constraint";

// OK for PGRES_COMMAND_OK, PGRES_TUPLES_OK and PGRES_PIPELINE_SYNC; ABORTED
// (no SQLSTATE) for PGRES_PIPELINE_ABORTED (the statement did not run: an
// earlier one in the pipeline failed); UNAVAILABLE for a null result (libpq
// returns none when it is out of memory or cannot send); otherwise the
// mapping above. `operation` names what failed, e.g. "insert tokens".
absl::Status FromPgResult(const PGresult* result, absl::string_view operation);

// A connection-level failure (PQconnectdb, a PQsend* or PQflush that
// failed): UNAVAILABLE, with libpq's message for the connection. The message
// drops every line that is a server's report of a statement (ERROR:, DETAIL:,
// HINT:, CONTEXT:, ... and their continuation lines): in pipeline mode libpq
// accumulates those in the connection's message, and they can echo values.
absl::Status FromPgConnection(const PGconn* connection,
                              absl::string_view operation);

// The code a SQLSTATE maps to (the table above); INTERNAL for anything
// malformed.
absl::StatusCode CodeForSqlState(absl::string_view sqlstate);

// The condition name of a SQLSTATE as PostgreSQL 15 spells it
// ("unique_violation"), or "" when it has none.
absl::string_view SqlStateName(absl::string_view sqlstate);

// The SQLSTATE a status carries (from FromPgResult), if any.
std::optional<std::string> SqlStateOf(const absl::Status& status);

// The constraint a status names (from FromPgResult), if any.
std::optional<std::string> ConstraintOf(const absl::Status& status);

}  // namespace cardvault::storage

#endif  // CARDVAULT_SERVER_STORAGE_PG_STATUS_H_
