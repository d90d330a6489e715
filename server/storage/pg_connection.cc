#include "server/storage/pg_connection.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "server/storage/pg_status.h"

namespace cardvault::storage {

// Where libpq's notice callback puts what it keeps; heap-allocated so that
// its address survives moves of the connection.
struct PgConnection::NoticeSink {
  std::vector<PgNotice> notices;
};

namespace {

void AppendBigEndian32(uint32_t v, std::string* out) {
  for (int shift = 24; shift >= 0; shift -= 8) {
    out->push_back(static_cast<char>((v >> shift) & 0xff));
  }
}

void AppendBigEndian64(uint64_t v, std::string* out) {
  for (int shift = 56; shift >= 0; shift -= 8) {
    out->push_back(static_cast<char>((v >> shift) & 0xff));
  }
}

// Array header of array_send: ndim, has_null, element type and, for one
// dimension, its length and lower bound.
std::string ArrayHeader(Oid element, size_t count) {
  std::string out;
  AppendBigEndian32(count == 0 ? 0 : 1, &out);
  AppendBigEndian32(0, &out);
  AppendBigEndian32(element, &out);
  if (count != 0) {
    AppendBigEndian32(static_cast<uint32_t>(count), &out);
    AppendBigEndian32(1, &out);
  }
  return out;
}

// Keeps the severity and SQLSTATE only: a notice's text can echo values.
void ReceiveNotice(void* arg, const PGresult* notice) {
  auto* sink = static_cast<std::vector<PgNotice>*>(arg);
  const char* severity =
      PQresultErrorField(notice, PG_DIAG_SEVERITY_NONLOCALIZED);
  const char* sqlstate = PQresultErrorField(notice, PG_DIAG_SQLSTATE);
  sink->push_back({severity == nullptr ? "" : severity,
                   sqlstate == nullptr ? "" : sqlstate});
}

// COMMIT [WORK|TRANSACTION] [AND [NO] CHAIN], END [...].
bool IsCommit(absl::string_view sql) {
  sql = absl::StripLeadingAsciiWhitespace(sql);
  const absl::string_view word = sql.substr(
      0, std::find_if(sql.begin(), sql.end(), [](char c) {
           return !absl::ascii_isalpha(static_cast<unsigned char>(c));
         }) - sql.begin());
  return absl::EqualsIgnoreCase(word, "commit") ||
         absl::EqualsIgnoreCase(word, "end");
}

// The warning PostgreSQL sends, after committing locally, when the wait for
// a synchronous standby is cancelled ("canceling wait for synchronous
// replication"); its text is not ours to read (localized, can echo), so any
// WARNING with the generic SQLSTATE counts.
const PgNotice* UnreplicatedCommitWarning(
    const std::vector<PgNotice>& notices) {
  for (const PgNotice& notice : notices) {
    if (notice.severity == "WARNING" && notice.sqlstate == "01000") {
      return &notice;
    }
  }
  return nullptr;
}

absl::Status UnreplicatedCommitStatus(const PgNotice& warning,
                                      absl::string_view operation) {
  absl::Status status = absl::UnknownError(absl::StrCat(
      operation,
      " committed with a warning (SQLSTATE 01000): the commit may exist on "
      "this server only (a cancelled wait for a synchronous standby); treat "
      "the outcome as unknown"));
  status.SetPayload(kSqlStateTypeUrl, absl::Cord(warning.sqlstate));
  return status;
}

absl::Status Lost(absl::string_view operation) {
  return absl::UnavailableError(
      absl::StrCat(operation,
                   ": the connection to the database was lost before the "
                   "answer arrived (if it could commit, the outcome is "
                   "unknown)"));
}

}  // namespace

// ---------------------------------------------------------------- PgResult

PgResult::PgResult(PgResult&& other) noexcept
    : result_(std::exchange(other.result_, nullptr)),
      notices_(std::move(other.notices_)) {}

PgResult& PgResult::operator=(PgResult&& other) noexcept {
  if (this != &other) {
    if (result_ != nullptr) PQclear(result_);
    result_ = std::exchange(other.result_, nullptr);
    notices_ = std::move(other.notices_);
  }
  return *this;
}

PgResult::~PgResult() {
  if (result_ != nullptr) PQclear(result_);
}

int PgResult::rows() const {
  return result_ == nullptr ? 0 : PQntuples(result_);
}

int PgResult::columns() const {
  return result_ == nullptr ? 0 : PQnfields(result_);
}

int64_t PgResult::affected_rows() const {
  if (result_ == nullptr) return 0;
  int64_t n = 0;
  // PQcmdTuples takes a non-const PGresult* but only reads it.
  return absl::SimpleAtoi(PQcmdTuples(const_cast<PGresult*>(result_)), &n) ? n
                                                                           : 0;
}

absl::string_view PgResult::command_tag() const {
  if (result_ == nullptr) return "";
  const char* tag = PQcmdStatus(const_cast<PGresult*>(result_));
  return tag == nullptr ? "" : tag;
}

absl::StatusOr<bool> PgResult::IsNull(int row, int column) const {
  if (result_ == nullptr) return absl::FailedPreconditionError("no result");
  if (row < 0 || row >= rows() || column < 0 || column >= columns()) {
    return absl::OutOfRangeError(absl::StrCat("no row ", row, " column ",
                                              column, " in a result of ",
                                              rows(), "x", columns()));
  }
  return PQgetisnull(result_, row, column) == 1;
}

absl::StatusOr<absl::string_view> PgResult::Value(
    int row, int column, absl::Span<const Oid> types) const {
  absl::StatusOr<bool> null = IsNull(row, column);
  if (!null.ok()) return null.status();
  if (PQfformat(result_, column) != 1) {
    return absl::InternalError(
        absl::StrCat("column ", column, " is not in binary format"));
  }
  const Oid type = PQftype(result_, column);
  if (std::find(types.begin(), types.end(), type) == types.end()) {
    return absl::InternalError(absl::StrCat("column ", column, " has type OID ",
                                            type, ", expected OID ", types[0]));
  }
  if (*null) {
    return absl::InternalError(
        absl::StrCat("column ", column, " of row ", row, " is NULL"));
  }
  return absl::string_view(PQgetvalue(result_, row, column),
                           PQgetlength(result_, row, column));
}

absl::StatusOr<absl::string_view> PgResult::Bytea(int row, int column) const {
  return Value(row, column, {kPgByteaOid});
}

absl::StatusOr<absl::string_view> PgResult::Text(int row, int column) const {
  return Value(row, column, {kPgTextOid, kPgVarcharOid});
}

absl::StatusOr<int64_t> PgResult::Int8(int row, int column) const {
  absl::StatusOr<absl::string_view> value =
      Value(row, column, {kPgInt8Oid, kPgInt4Oid, kPgInt2Oid});
  if (!value.ok()) return value.status();
  const size_t expected = PQftype(result_, column) == kPgInt8Oid   ? 8
                          : PQftype(result_, column) == kPgInt4Oid ? 4
                                                                   : 2;
  if (value->size() != expected) {
    return absl::InternalError(absl::StrCat("column ", column, " holds ",
                                            value->size(), " bytes, expected ",
                                            expected));
  }
  uint64_t u = 0;
  for (unsigned char c : *value) u = (u << 8) | c;
  // Sign-extend the narrower types.
  const int unused_bits = 64 - 8 * static_cast<int>(expected);
  return static_cast<int64_t>(u << unused_bits) >> unused_bits;
}

absl::StatusOr<bool> PgResult::Bool(int row, int column) const {
  absl::StatusOr<absl::string_view> value = Value(row, column, {kPgBoolOid});
  if (!value.ok()) return value.status();
  if (value->size() != 1) {
    return absl::InternalError(
        absl::StrCat("column ", column, " is not a one-byte bool"));
  }
  return (*value)[0] != 0;
}

// ---------------------------------------------------------------- PgParams

void PgParams::Add(Oid type, std::string value, bool null) {
  if (value.size() > static_cast<size_t>(INT_MAX) && status_.ok()) {
    status_ = absl::InvalidArgumentError(
        absl::StrCat("parameter ", size() + 1, " is larger than 2 GiB"));
  }
  types_.push_back(type);
  values_.push_back(std::move(value));
  nulls_.push_back(null ? 1 : 0);
}

PgParams& PgParams::AddBytea(absl::string_view value) {
  Add(kPgByteaOid, std::string(value), false);
  return *this;
}

PgParams& PgParams::AddInt8(int64_t value) {
  std::string out;
  AppendBigEndian64(static_cast<uint64_t>(value), &out);
  Add(kPgInt8Oid, std::move(out), false);
  return *this;
}

PgParams& PgParams::AddText(absl::string_view value) {
  Add(kPgTextOid, std::string(value), false);
  return *this;
}

PgParams& PgParams::AddNull(Oid type) {
  Add(type, std::string(), true);
  return *this;
}

template <typename T>
void PgParams::AddArrayOfBytea(absl::Span<const T> values) {
  size_t total = 20;
  for (const T& v : values) total += 4 + v.size();
  std::string out = ArrayHeader(kPgByteaOid, values.size());
  out.reserve(total);
  for (size_t i = 0; i < values.size(); ++i) {
    if (values[i].size() > static_cast<size_t>(INT32_MAX) ||
        values.size() > static_cast<size_t>(INT32_MAX)) {
      if (status_.ok()) {
        status_ = absl::InvalidArgumentError(
            absl::StrCat("element ", i, " of array parameter ", size() + 1,
                         " is too large"));
      }
      break;
    }
    AppendBigEndian32(static_cast<uint32_t>(values[i].size()), &out);
    out.append(values[i].data(), values[i].size());
  }
  Add(kPgByteaArrayOid, std::move(out), false);
}

PgParams& PgParams::AddByteaArray(absl::Span<const std::string> values) {
  AddArrayOfBytea(values);
  return *this;
}

PgParams& PgParams::AddByteaArray(absl::Span<const absl::string_view> values) {
  AddArrayOfBytea(values);
  return *this;
}

PgParams& PgParams::AddInt8Array(absl::Span<const int64_t> values) {
  std::string out = ArrayHeader(kPgInt8Oid, values.size());
  out.reserve(out.size() + 12 * values.size());
  for (int64_t v : values) {
    AppendBigEndian32(8, &out);
    AppendBigEndian64(static_cast<uint64_t>(v), &out);
  }
  Add(kPgInt8ArrayOid, std::move(out), false);
  return *this;
}

absl::Status FirstError(absl::Span<const PgStatementResult> results) {
  for (const PgStatementResult& r : results) {
    if (!r.status.ok()) return r.status;
  }
  return absl::OkStatus();
}

// ------------------------------------------------------------ PgConnection

absl::StatusOr<PgConnection> PgConnection::Connect(absl::string_view conninfo) {
  const std::string info(conninfo);
  // Parsed first because libpq's parse errors quote the string (a password
  // in it included), and to know what to scrub from libpq's messages.
  char* parse_error = nullptr;
  PQconninfoOption* options = PQconninfoParse(info.c_str(), &parse_error);
  if (options == nullptr) {
    if (parse_error != nullptr) PQfreemem(parse_error);
    return absl::InvalidArgumentError(
        "the database connection string is malformed (its text is not "
        "repeated: it can hold a password)");
  }
  std::vector<std::string> secrets;
  for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (o->val != nullptr && o->val[0] != '\0' &&
        (std::strcmp(o->keyword, "password") == 0 ||
         std::strcmp(o->keyword, "sslpassword") == 0)) {
      secrets.emplace_back(o->val);
    }
  }
  PQconninfoFree(options);

  PGconn* connection = PQconnectdb(info.c_str());
  if (connection == nullptr) {
    return absl::UnavailableError(
        "connect to the database failed: out of memory");
  }
  if (PQstatus(connection) != CONNECTION_OK) {
    absl::Status failed =
        FromPgConnection(connection, "connect to the database");
    std::string message(failed.message());
    for (const std::string& secret : secrets) {
      absl::StrReplaceAll({{secret, "<redacted>"}}, &message);
    }
    const bool needs_password = PQconnectionNeedsPassword(connection) == 1;
    PQfinish(connection);
    if (needs_password) return absl::UnauthenticatedError(message);
    return absl::UnavailableError(message);
  }
  // Nonblocking: every wait is our poll() (see the header's I/O section).
  if (PQsetnonblocking(connection, 1) != 0) {
    PQfinish(connection);
    return absl::InternalError(
        "could not make the database connection "
        "nonblocking");
  }
  PQsetErrorVerbosity(connection, PQERRORS_TERSE);
  PQsetErrorContextVisibility(connection, PQSHOW_CONTEXT_NEVER);
  auto sink = std::make_unique<NoticeSink>();
  PQsetNoticeReceiver(connection, &ReceiveNotice, &sink->notices);
  return PgConnection(connection, std::move(sink));
}

PgConnection::PgConnection(PGconn* connection, std::unique_ptr<NoticeSink> sink)
    : connection_(connection), sink_(std::move(sink)) {}

PgConnection::PgConnection(PgConnection&& other) noexcept
    : connection_(std::exchange(other.connection_, nullptr)),
      sink_(std::move(other.sink_)),
      pending_(std::move(other.pending_)),
      skipping_(other.skipping_),
      broken_(other.broken_),
      prepared_(std::move(other.prepared_)),
      parsing_(std::move(other.parsing_)),
      statements_named_(other.statements_named_),
      orphaned_(other.orphaned_) {
  other.pending_.clear();
  other.prepared_.clear();
  other.parsing_.clear();
}

PgConnection& PgConnection::operator=(PgConnection&& other) noexcept {
  if (this != &other) {
    if (connection_ != nullptr) PQfinish(connection_);
    connection_ = std::exchange(other.connection_, nullptr);
    sink_ = std::move(other.sink_);
    pending_ = std::move(other.pending_);
    other.pending_.clear();
    skipping_ = other.skipping_;
    broken_ = other.broken_;
    prepared_ = std::move(other.prepared_);
    other.prepared_.clear();
    parsing_ = std::move(other.parsing_);
    other.parsing_.clear();
    statements_named_ = other.statements_named_;
    orphaned_ = other.orphaned_;
  }
  return *this;
}

PgConnection::~PgConnection() {
  if (connection_ != nullptr) PQfinish(connection_);
}

bool PgConnection::healthy() const {
  return connection_ != nullptr && !broken_ &&
         PQstatus(connection_) == CONNECTION_OK;
}

int PgConnection::backend_pid() const {
  return connection_ == nullptr ? 0 : PQbackendPID(connection_);
}

PGTransactionStatusType PgConnection::transaction_status() const {
  return connection_ == nullptr ? PQTRANS_UNKNOWN
                                : PQtransactionStatus(connection_);
}

absl::Status PgConnection::Usable(absl::string_view operation) const {
  if (connection_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(operation, ": no connection (moved from)"));
  }
  if (!healthy()) {
    return absl::UnavailableError(
        absl::StrCat(operation,
                     ": the connection to the database is broken; connect "
                     "again"));
  }
  return absl::OkStatus();
}

namespace {

absl::Status CheckParams(const PgParams& params) {
  if (!params.status().ok()) return params.status();
  if (params.size() > kPgMaxParams) {
    return absl::InvalidArgumentError(
        absl::StrCat(params.size(), " parameters; PostgreSQL takes at most ",
                     kPgMaxParams, " (use an array parameter)"));
  }
  return absl::OkStatus();
}

}  // namespace

bool PgConnection::Send(absl::string_view sql, absl::string_view name,
                        const PgParams& params) {
  const int n = params.size();
  std::vector<const char*> values(n);
  std::vector<int> lengths(n);
  const std::vector<int> formats(n, 1);
  for (int i = 0; i < n; ++i) {
    values[i] = params.nulls_[i] ? nullptr : params.values_[i].data();
    lengths[i] = static_cast<int>(params.values_[i].size());
  }
  if (!name.empty()) {
    const std::string statement_name(name);
    return PQsendQueryPrepared(connection_, statement_name.c_str(), n,
                               values.data(), lengths.data(), formats.data(),
                               /*resultFormat=*/1) == 1;
  }
  const std::string statement(sql);
  return PQsendQueryParams(connection_, statement.c_str(), n,
                           params.types_.data(), values.data(), lengths.data(),
                           formats.data(), /*resultFormat=*/1) == 1;
}

bool PgConnection::SendParse(absl::string_view sql, const PgParams& params,
                             std::string* name) {
  *name = absl::StrCat("cv", ++statements_named_);
  const std::string statement(sql);
  return PQsendPrepare(connection_, name->c_str(), statement.c_str(),
                       params.size(), params.types_.data()) == 1;
}

std::string PgConnection::PreparedKey(absl::string_view sql,
                                      const PgParams& params) {
  std::string key(sql);
  key.push_back('\0');
  for (Oid type : params.types_) AppendBigEndian32(type, &key);
  return key;
}

void PgConnection::ForgetPreparedIfGone(const PgStatementResult& result) {
  // 26000 invalid_sql_statement_name: the session lost its statements;
  // 0A000 also comes as "cached plan must not change result type" after a
  // migration altered a table.
  const std::optional<std::string> state = SqlStateOf(result.status);
  if (state != "26000" && state != "0A000") return;
  // After 0A000 the server still holds them under their names: they count
  // toward the bound until the session ends, or each ALTER would add one
  // more copy of every text.
  if (state == "0A000") orphaned_ += prepared_.size();
  prepared_.clear();
}

PGresult* PgConnection::NextResult(absl::Status* error) {
  while (true) {
    // 0: all sent, 1: more to send (the socket is full), -1: failed.
    const int flushed = PQflush(connection_);
    // PQisBusy parses what has arrived; when false, PQgetResult will not
    // block.
    if (!PQisBusy(connection_)) {
      PGresult* result = PQgetResult(connection_);
      if (result == nullptr && PQstatus(connection_) == CONNECTION_BAD) {
        *error = FromPgConnection(connection_, "read from the database");
      }
      return result;
    }
    if (flushed < 0 || PQstatus(connection_) == CONNECTION_BAD) {
      *error = FromPgConnection(connection_, "send to the database");
      return nullptr;
    }
    pollfd fd{};
    fd.fd = PQsocket(connection_);
    fd.events = static_cast<short>(POLLIN | (flushed == 1 ? POLLOUT : 0));
    if (fd.fd < 0) {
      *error = FromPgConnection(connection_, "read from the database");
      return nullptr;
    }
    if (poll(&fd, 1, -1) < 0) {
      if (errno == EINTR) continue;
      *error = absl::UnavailableError(absl::StrCat(
          "poll on the database connection failed: ", std::strerror(errno)));
      return nullptr;
    }
    // Read whenever anything but "writable" happened: an error or hangup is
    // discovered by reading. A failed read leaves an error for PQgetResult.
    if ((fd.revents & ~POLLOUT) != 0) PQconsumeInput(connection_);
  }
}

PgStatementResult PgConnection::FinishStatement(PGresult* first,
                                                const Pending& pending,
                                                absl::string_view operation) {
  PgStatementResult out;
  out.status = FromPgResult(first, operation);
  out.result = PgResult(first);
  // One result per statement, then null; a later one is an error (keep the
  // first error).
  while (true) {
    absl::Status error;
    PGresult* more = NextResult(&error);
    if (more == nullptr) {
      if (!error.ok()) {
        MarkBroken();
        // Outside a pipeline the implicit commit happens after the result:
        // a loss now leaves it unknown.
        if (out.status.ok()) out.status = Lost(operation);
      }
      break;
    }
    PgResult extra(more);
    if (PQresultStatus(more) == PGRES_PIPELINE_SYNC) {
      MarkBroken();
      out.status = absl::InternalError(
          absl::StrCat(operation, ": the pipeline lost its place"));
      break;
    }
    absl::Status status = FromPgResult(more, operation);
    if (out.status.ok() && !status.ok()) {
      out.status = status;
      out.result = std::move(extra);
    }
  }
  out.result.notices_ = std::move(sink_->notices);
  sink_->notices.clear();
  if (out.status.ok() && pending.is_commit &&
      out.result.command_tag() == "ROLLBACK") {
    out.status = absl::AbortedError(absl::StrCat(
        operation,
        " rolled back: the transaction had failed before the COMMIT"));
  }
  if (out.status.ok()) {
    if (const PgNotice* w = UnreplicatedCommitWarning(out.result.notices_)) {
      out.status = UnreplicatedCommitStatus(*w, operation);
    }
  }
  return out;
}

absl::StatusOr<PgStatementResult> PgConnection::AnswerTo(
    bool sent, const Pending& pending, absl::string_view operation) {
  if (!sent) {
    MarkBroken();
    return FromPgConnection(connection_, operation);
  }
  absl::Status error;
  PGresult* first = NextResult(&error);
  if (first == nullptr) {
    MarkBroken();
    return error.ok() ? Lost(operation) : error;
  }
  return FinishStatement(first, pending, operation);
}

absl::StatusOr<PgResult> PgConnection::Exec(absl::string_view sql,
                                            const PgParams& params) {
  constexpr absl::string_view kOperation = "statement";
  if (!pending_.empty()) {
    return absl::FailedPreconditionError(
        "Exec while statements are queued: Sync() first");
  }
  if (absl::Status s = Usable(kOperation); !s.ok()) return s;
  if (absl::Status s = CheckParams(params); !s.ok()) return s;
  sink_->notices.clear();
  const std::string key = PreparedKey(sql, params);
  std::string name;
  const auto cached = prepared_.find(key);
  const bool was_prepared = cached != prepared_.end();
  if (was_prepared) {
    name = cached->second;
  } else if (MayPrepare()) {
    absl::StatusOr<PgStatementResult> parse =
        AnswerTo(SendParse(sql, params, &name), Pending(), kOperation);
    if (!parse.ok()) return parse.status();
    if (!parse->status.ok()) return parse->status;
    prepared_.emplace(key, name);
  }
  Pending pending;
  pending.is_commit = IsCommit(sql);
  absl::StatusOr<PgStatementResult> answer =
      AnswerTo(Send(sql, name, params), pending, kOperation);
  if (!answer.ok()) return answer.status();
  PgStatementResult& result = *answer;
  ForgetPreparedIfGone(result);
  if (was_prepared && SqlStateOf(result.status) == "26000" && !broken_ &&
      PQtransactionStatus(connection_) == PQTRANS_IDLE) {
    // The server forgot the statement before running it: prepare it again.
    // Not inside a transaction block: the error failed it, so the caller
    // gets ABORTED (roll back, retry the whole) instead of 25P02.
    return Exec(sql, params);
  }
  if (!result.status.ok()) return result.status;
  return std::move(result.result);
}

absl::Status PgConnection::ExecScript(absl::string_view sql) {
  constexpr absl::string_view kOperation = "script";
  if (!pending_.empty()) {
    return absl::FailedPreconditionError(
        "ExecScript while statements are queued: Sync() first");
  }
  if (absl::Status s = Usable(kOperation); !s.ok()) return s;
  const std::string script(sql);
  if (PQsendQuery(connection_, script.c_str()) != 1) {
    MarkBroken();
    return FromPgConnection(connection_, kOperation);
  }
  // One result per statement until the first error, then null.
  absl::Status first_error;
  while (true) {
    absl::Status error;
    PGresult* result = NextResult(&error);
    if (result == nullptr) {
      if (!error.ok()) {
        MarkBroken();
        if (first_error.ok()) first_error = Lost(kOperation);
      }
      break;
    }
    PgResult owned(result);
    absl::Status status = FromPgResult(result, kOperation);
    if (first_error.ok()) first_error = status;
  }
  sink_->notices.clear();
  return first_error;
}

void PgConnection::Queue(absl::string_view sql, const PgParams& params) {
  constexpr absl::string_view kOperation = "queued statement";
  Pending pending;
  pending.is_commit = IsCommit(sql);
  if (skipping_) {
    pending.local_error = absl::AbortedError(
        "queued statement not sent: an earlier statement of the pipeline "
        "failed");
    pending_.push_back(std::move(pending));
    return;
  }
  absl::Status status = Usable(kOperation);
  if (status.ok()) status = CheckParams(params);
  if (status.ok() && PQpipelineStatus(connection_) == PQ_PIPELINE_OFF &&
      PQenterPipelineMode(connection_) != 1) {
    MarkBroken();
    status = FromPgConnection(connection_, "enter pipeline mode");
  }
  std::string name;
  if (status.ok()) {
    std::string key = PreparedKey(sql, params);
    if (auto it = prepared_.find(key); it != prepared_.end()) {
      name = it->second;
    } else if (auto it = parsing_.find(key); it != parsing_.end()) {
      name = it->second;
    } else if (MayPrepare()) {
      Pending parse;
      if (SendParse(sql, params, &parse.parse_name)) {
        name = parse.parse_name;
        parsing_.emplace(key, name);
        parse.parse_key = std::move(key);
        pending_.push_back(std::move(parse));
      } else {
        MarkBroken();
        status = FromPgConnection(connection_, kOperation);
      }
    }
  }
  if (status.ok() && !Send(sql, name, params)) {
    MarkBroken();
    status = FromPgConnection(connection_, kOperation);
  }
  if (!status.ok()) {
    pending.local_error = std::move(status);
    skipping_ = true;
  }
  pending_.push_back(std::move(pending));
}

std::vector<PgStatementResult> PgConnection::Sync() {
  constexpr absl::string_view kOperation = "pipelined statement";
  std::vector<Pending> pending = std::move(pending_);
  pending_.clear();
  skipping_ = false;
  std::vector<PgStatementResult> out(pending.size());
  if (pending.empty()) return out;
  const bool any_sent =
      std::any_of(pending.begin(), pending.end(),
                  [](const Pending& p) { return p.local_error.ok(); });

  // Set once the rest of the pipeline cannot be read: every statement after
  // it, and every OK before it (its commit is unknown), gets it.
  absl::Status failure;
  if (any_sent) {
    failure = Usable("sync");
    if (failure.ok() && PQpipelineSync(connection_) != 1) {
      MarkBroken();
      failure = FromPgConnection(connection_, "sync");
    }
  }
  sink_->notices.clear();
  for (size_t i = 0; i < pending.size(); ++i) {
    if (!pending[i].local_error.ok()) {
      out[i].status = pending[i].local_error;
      continue;
    }
    if (!failure.ok()) continue;
    absl::Status error;
    PGresult* first = NextResult(&error);
    if (first == nullptr || PQresultStatus(first) == PGRES_PIPELINE_SYNC) {
      if (first != nullptr) PQclear(first);
      MarkBroken();
      failure = error.ok() ? absl::InternalError(absl::StrCat(
                                 kOperation, ": the pipeline lost its place"))
                           : Lost(kOperation);
      continue;
    }
    out[i] = FinishStatement(first, pending[i], kOperation);
    if (broken_) failure = Lost(kOperation);
  }

  // Up to the sync point. An error here is the implicit commit's.
  absl::Status commit_error;
  if (any_sent && failure.ok()) {
    int nulls = 0;
    while (true) {
      absl::Status error;
      PGresult* result = NextResult(&error);
      if (result == nullptr) {
        // One null follows an error result; more means libpq lost track.
        if (error.ok() && ++nulls <= 1) continue;
        MarkBroken();
        failure = error.ok() ? absl::InternalError(
                                   absl::StrCat(kOperation, ": no sync point"))
                             : Lost(kOperation);
        break;
      }
      PgResult owned(result);
      if (PQresultStatus(result) == PGRES_PIPELINE_SYNC) break;
      absl::Status status = FromPgResult(result, "commit at the sync point");
      if (status.ok()) {
        status = absl::InternalError(absl::StrCat(
            kOperation, ": an unexpected result before the sync point"));
      }
      if (commit_error.ok()) commit_error = status;
    }
    if (commit_error.ok()) {
      if (const PgNotice* w = UnreplicatedCommitWarning(sink_->notices)) {
        commit_error = UnreplicatedCommitStatus(*w, "commit at the sync point");
      }
    }
    sink_->notices.clear();
  }
  // Parses are not the caller's statements: keep what they prepared (a
  // prepared statement outlives the transaction), give a failed one's error
  // to its statement, and leave them out of the results.
  std::vector<PgStatementResult> statements;
  statements.reserve(pending.size());
  absl::Status parse_error;
  for (size_t i = 0; i < pending.size(); ++i) {
    if (!pending[i].parse_key.empty()) {
      parsing_.erase(pending[i].parse_key);
      if (out[i].status.ok() && failure.ok()) {
        prepared_.emplace(pending[i].parse_key, pending[i].parse_name);
      } else if (!absl::IsAborted(out[i].status) ||
                 SqlStateOf(out[i].status).has_value()) {
        parse_error = out[i].status;
      }
      continue;
    }
    ForgetPreparedIfGone(out[i]);
    if (!parse_error.ok() && absl::IsAborted(out[i].status) &&
        !SqlStateOf(out[i].status).has_value()) {
      out[i].status = parse_error;
    }
    parse_error = absl::OkStatus();
    statements.push_back(std::move(out[i]));
  }
  const absl::Status& group_error = failure.ok() ? commit_error : failure;
  if (!group_error.ok()) {
    for (PgStatementResult& r : statements) {
      if (r.status.ok()) r.status = group_error;
    }
  }
  if (!broken_ && PQpipelineStatus(connection_) != PQ_PIPELINE_OFF &&
      PQexitPipelineMode(connection_) != 1) {
    MarkBroken();
  }
  return statements;
}

}  // namespace cardvault::storage
