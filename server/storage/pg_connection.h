// Owners of libpq objects: a result, a connection with binary parameters, and
// pipelines (many statements per round trip).
//
// Formats. Every parameter and every result column travels in PostgreSQL's
// binary format (result format 1):
//   bytea  (OID 17)   the bytes themselves.
//   int8   (OID 20)   8 bytes, two's complement, big-endian.
//   text   (OID 25)   the bytes in the client encoding (UTF-8 on our
//                     servers); the server rejects a NUL or invalid UTF-8
//                     with SQLSTATE 22021 (INVALID_ARGUMENT).
//   bytea[] (OID 1001), int8[] (OID 1016): array_send's layout, all integers
//       big-endian: int32 ndim (1; 0 for an empty array, which then has no
//       dimension), int32 has_null (0), uint32 element OID, per dimension
//       int32 length and int32 lower bound (1), then per element int32 byte
//       length and the element in its binary format. For many rows in one
//       statement: `INSERT ... SELECT * FROM unnest($1::bytea[],
//       $2::int8[])`, `WHERE k = ANY($1::bytea[])`.
// Results are read in the same formats (PgResult::Bytea, Int8, Text, Bool);
// reading a column of another type is INTERNAL (a bug in our SQL).
//
// Values never reach a status message or a log: errors go through
// pg_status.h, which never copies PostgreSQL's texts that can echo values;
// the connection installs a notice receiver that keeps only the severity
// and SQLSTATE of each notice (libpq's default prints the text to stderr);
// error verbosity is terse and a failed Connect never repeats the connection
// string (it can hold the password, which is scrubbed from libpq's message).
//
// I/O. The connection is in libpq's nonblocking mode and every wait is a
// poll() for readable (and writable while output is pending): sending and
// reading interleave, so a pipeline whose statements or results exceed the
// socket buffers cannot deadlock (the client blocked writing while the
// server is blocked writing results nobody reads). Waits have no deadline
// of their own: bound them with the conninfo's tcp_user_timeout / keepalives
// and the server's statement_timeout.
//
// Prepared statements. Every statement is sent as a named prepared
// statement of this connection (Parse once, then Bind/Execute by name), so
// the server parses and plans each SQL text once per session instead of
// once per call: the write path's statements are a fixed set. The first use
// of a text queues its Parse ahead of it in the same pipeline (or, for Exec,
// costs one extra round trip); a Parse that fails is reported as the error
// of its statement. At most kPgMaxPreparedStatements texts are kept per
// connection; later ones run unnamed. A server that forgot them (SQLSTATE
// 26000, e.g. after DISCARD ALL by a pooler) clears the cache. Named
// statements last for the session: a pooler in front must keep sessions
// (PgBouncer's session mode, or transaction mode with its
// max_prepared_statements).
//
// Transactions. Without BEGIN, every Sync() (and every Exec) is one implicit
// transaction that commits when it ends. With BEGIN, a transaction may span
// several Sync() calls. After an error inside an explicit transaction, the
// session stays in a failed transaction (transaction_status() ==
// PQTRANS_INERROR) until ROLLBACK; a COMMIT sent then does a rollback and
// reports the command tag "ROLLBACK", which this class turns into ABORTED
// (never an OK). A statement, COMMIT or implicit commit that ends with the
// warning PostgreSQL sends after committing locally while a wait for a
// synchronous standby was cancelled (SQLSTATE 01000) becomes UNKNOWN: the
// commit happened here but may not survive a failover.
//
// Thread safety: a PgConnection (and each PgResult, PgParams) is used by one
// thread at a time; there is no internal locking. Different connections may
// be used from different threads at once (libpq is thread-safe per
// connection). A PgResult stays valid after its connection is gone.
#ifndef CARDVAULT_SERVER_STORAGE_PG_CONNECTION_H_
#define CARDVAULT_SERVER_STORAGE_PG_CONNECTION_H_

#include <libpq-fe.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace cardvault::storage {

inline constexpr Oid kPgBoolOid = 16;
inline constexpr Oid kPgByteaOid = 17;
inline constexpr Oid kPgInt8Oid = 20;
inline constexpr Oid kPgInt2Oid = 21;
inline constexpr Oid kPgInt4Oid = 23;
inline constexpr Oid kPgTextOid = 25;
inline constexpr Oid kPgVarcharOid = 1043;
inline constexpr Oid kPgByteaArrayOid = 1001;
inline constexpr Oid kPgInt8ArrayOid = 1016;

// PostgreSQL's limit on the parameters of one statement (a 16-bit count).
inline constexpr int kPgMaxParams = 65535;

// Distinct SQL texts one connection keeps prepared (see "Prepared
// statements"); the vault's own statements number a few dozen.
inline constexpr size_t kPgMaxPreparedStatements = 128;

// A notice (warning, notice) the server sent with a statement. Its text is
// dropped: it can echo values.
struct PgNotice {
  std::string severity;  // not localized: "WARNING", "NOTICE", ...
  std::string sqlstate;  // e.g. "01000"
};

// Owns a PGresult (PQclear). Accessors check the row, the column, the
// column's type and that it is in binary format.
class PgResult {
 public:
  PgResult() = default;
  explicit PgResult(PGresult* result) : result_(result) {}
  PgResult(PgResult&& other) noexcept;
  PgResult& operator=(PgResult&& other) noexcept;
  PgResult(const PgResult&) = delete;
  PgResult& operator=(const PgResult&) = delete;
  ~PgResult();

  const PGresult* get() const { return result_; }
  explicit operator bool() const { return result_ != nullptr; }

  int rows() const;
  int columns() const;
  // Rows an INSERT/UPDATE/DELETE touched (0 when the tag has no count).
  int64_t affected_rows() const;
  // "INSERT 0 1", "COMMIT", ... ("" without a result).
  absl::string_view command_tag() const;
  // Notices that arrived with this statement, in order.
  const std::vector<PgNotice>& notices() const { return notices_; }

  // OUT_OF_RANGE for a row or column that does not exist.
  absl::StatusOr<bool> IsNull(int row, int column) const;
  // The views point into the result: valid while it lives. A NULL value is
  // INTERNAL (check IsNull first where NULL is legitimate).
  absl::StatusOr<absl::string_view> Bytea(int row, int column) const;
  // text, varchar.
  absl::StatusOr<absl::string_view> Text(int row, int column) const;
  // int8; int4 and int2 (e.g. pg_backend_pid()) are widened.
  absl::StatusOr<int64_t> Int8(int row, int column) const;
  absl::StatusOr<bool> Bool(int row, int column) const;

 private:
  friend class PgConnection;
  absl::StatusOr<absl::string_view> Value(int row, int column,
                                          absl::Span<const Oid> types) const;

  PGresult* result_ = nullptr;
  std::vector<PgNotice> notices_;
};

// Binary parameters $1, $2, ... in the order added. Copies the values.
class PgParams {
 public:
  PgParams() = default;
  PgParams(PgParams&&) = default;
  PgParams& operator=(PgParams&&) = default;
  PgParams(const PgParams&) = delete;
  PgParams& operator=(const PgParams&) = delete;

  PgParams& AddBytea(absl::string_view value);
  PgParams& AddInt8(int64_t value);
  PgParams& AddText(absl::string_view value);
  // SQL NULL of a type (kPgByteaOid, ...).
  PgParams& AddNull(Oid type);
  PgParams& AddByteaArray(absl::Span<const std::string> values);
  PgParams& AddByteaArray(absl::Span<const absl::string_view> values);
  PgParams& AddInt8Array(absl::Span<const int64_t> values);

  int size() const { return static_cast<int>(types_.size()); }
  // The wire bytes of parameter i (empty for NULL): for tests of the format.
  const std::string& encoded(int i) const { return values_[i]; }
  // INVALID_ARGUMENT once a value could not be encoded (an element of 2 GiB
  // or more); the statement is then not sent.
  const absl::Status& status() const { return status_; }

 private:
  friend class PgConnection;
  void Add(Oid type, std::string value, bool null);
  template <typename T>
  void AddArrayOfBytea(absl::Span<const T> values);

  std::vector<Oid> types_;
  std::vector<std::string> values_;
  std::vector<char> nulls_;
  absl::Status status_;
};

// One statement's outcome in a pipeline.
struct PgStatementResult {
  // OK; the statement's error; ABORTED without SQLSTATE when it did not run
  // because an earlier statement of the same Sync() failed.
  absl::Status status;
  // Rows and notices (a null result unless the server answered).
  PgResult result;
};

// The first non-OK status, in statement order (OK if none): the outcome of
// a group, since every later statement only reports that it was skipped.
absl::Status FirstError(absl::Span<const PgStatementResult> results);

// Owns a PGconn (PQfinish).
class PgConnection {
 public:
  // PQconnectdb (blocking; bounded by the conninfo's connect_timeout).
  // INVALID_ARGUMENT for a malformed string, UNAUTHENTICATED when the server
  // wants a password none was given for, UNAVAILABLE otherwise (libpq's
  // message, which names host, port, user and database, with any password
  // in the string replaced by <redacted>).
  static absl::StatusOr<PgConnection> Connect(absl::string_view conninfo);

  PgConnection(PgConnection&& other) noexcept;
  PgConnection& operator=(PgConnection&& other) noexcept;
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;
  ~PgConnection();

  // False once the connection is lost or its protocol state is unknown:
  // every later call fails with UNAVAILABLE; connect again.
  bool healthy() const;
  // The server process serving this connection (pg_terminate_backend).
  int backend_pid() const;
  // PQTRANS_IDLE, PQTRANS_INTRANS, PQTRANS_INERROR (roll back), ...
  PGTransactionStatusType transaction_status() const;

  // One statement outside a pipeline (binary parameters and results).
  // FAILED_PRECONDITION while statements are queued.
  absl::StatusOr<PgResult> Exec(absl::string_view sql,
                                const PgParams& params = PgParams());
  // Statements separated by ';' without parameters (e.g. a schema
  // migration), by the simple query protocol: they run as one implicit
  // transaction unless the script has its own BEGIN/COMMIT. Results are
  // dropped; the first error is returned.
  absl::Status ExecScript(absl::string_view sql);

  // Queues a statement in the pipeline (entering pipeline mode). Never
  // fails here: a failure (to encode, to send) shows in this statement's
  // result at Sync(), and like a server-side error it skips every later
  // statement up to the Sync().
  void Queue(absl::string_view sql, const PgParams& params = PgParams());
  // Statements queued since the last Sync().
  size_t queued() const { return pending_.size() - parsing_.size(); }
  // Sends a sync point and reads one result per queued statement, in order,
  // then leaves pipeline mode. Everything before the sync point commits
  // (if no BEGIN is open) or fails together: an error when the sync point
  // commits (a deferred constraint, a serialization failure at commit)
  // becomes the status of every statement that had succeeded. If the
  // connection is lost, the statement that met the loss is UNAVAILABLE,
  // later ones are ABORTED (libpq reports them skipped) or UNAVAILABLE (no
  // answer), and every statement that had succeeded becomes UNAVAILABLE
  // too: the group's commit is unknown.
  std::vector<PgStatementResult> Sync();

 private:
  struct NoticeSink;
  struct Pending {
    absl::Status local_error;  // set: not sent
    bool is_commit = false;
    // Set: this is the Parse of the next entry's text (not a statement of
    // the caller's); kept as prepared under these once it succeeds.
    std::string parse_key;
    std::string parse_name;
  };

  PgConnection(PGconn* connection, std::unique_ptr<NoticeSink> sink);
  absl::Status Usable(absl::string_view operation) const;
  // PQsendQueryPrepared of `name` (PQsendQueryParams of `sql` when empty)
  // with binary parameters and results; false if libpq could not queue or
  // send it.
  bool Send(absl::string_view sql, absl::string_view name,
            const PgParams& params);
  // PQsendPrepare of `sql` under a new name, returned in *name.
  bool SendParse(absl::string_view sql, const PgParams& params,
                 std::string* name);
  // The cache key of `sql` with its parameter types.
  static std::string PreparedKey(absl::string_view sql, const PgParams& params);
  // Whether a new text may still be prepared (the cache is not full).
  bool MayPrepare() const {
    return prepared_.size() + parsing_.size() + orphaned_ <
           kPgMaxPreparedStatements;
  }
  // Forgets every prepared statement when `result` says the server has.
  void ForgetPreparedIfGone(const PgStatementResult& result);
  // The next PQgetResult answer (nullptr: end of the current statement, or
  // a failure, then in *error), polling and flushing while it is not ready.
  PGresult* NextResult(absl::Status* error);
  // The answer to the one statement just sent (`sent`: libpq took it)
  // outside a pipeline; the error when the connection broke instead.
  absl::StatusOr<PgStatementResult> AnswerTo(bool sent, const Pending& pending,
                                             absl::string_view operation);
  // Reads the rest of one statement's results up to its terminating null.
  PgStatementResult FinishStatement(PGresult* first, const Pending& pending,
                                    absl::string_view operation);
  void MarkBroken() { broken_ = true; }

  PGconn* connection_ = nullptr;
  std::unique_ptr<NoticeSink> sink_;  // stable address for libpq's callback
  std::vector<Pending> pending_;
  bool skipping_ = false;  // a queued statement failed locally
  bool broken_ = false;
  // Prepared statements: name by PreparedKey, confirmed by the server.
  absl::flat_hash_map<std::string, std::string> prepared_;
  // Parses queued in the current pipeline, not yet answered.
  absl::flat_hash_map<std::string, std::string> parsing_;
  uint64_t statements_named_ = 0;
  // Statements the server still holds that the cache forgot (0A000).
  size_t orphaned_ = 0;
};

}  // namespace cardvault::storage

#endif  // CARDVAULT_SERVER_STORAGE_PG_CONNECTION_H_
