#include "server/storage/pg_connection.h"

#include <libpq-fe.h>

#include <cstdint>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/pg_status.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_env.h"

namespace cardvault::storage {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::IsOkAndHolds;
using ::cardvault::testing::PostgresServer;
using ::cardvault::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Optional;

constexpr char kPan[] = "4111111111111111";

std::string AllByteValues() {
  std::string s;
  for (int i = 0; i < 256; ++i) s.push_back(static_cast<char>(i));
  return s;
}

std::vector<absl::StatusCode> Codes(
    const std::vector<PgStatementResult>& results) {
  std::vector<absl::StatusCode> codes;
  for (const PgStatementResult& r : results) codes.push_back(r.status.code());
  return codes;
}

class PgConnectionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const absl::Time start = absl::Now();
    auto server = PostgresServer::Start({});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
    std::cout << "PostgreSQL harness started in "
              << absl::FormatDuration(absl::Now() - start) << " on port "
              << server_->port() << "\n";
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  static PgConnection Connect() {
    auto connection = PgConnection::Connect(server_->conninfo());
    EXPECT_THAT(connection, IsOk());
    return *std::move(connection);
  }

  static PostgresServer* server_;
};

PostgresServer* PgConnectionTest::server_ = nullptr;

TEST_F(PgConnectionTest, ByteaRoundTripsEveryByteAndEmptyAndNull) {
  PgConnection c = Connect();
  const std::string all = AllByteValues();
  CARDVAULT_ASSERT_OK_AND_ASSIGN(
      PgResult r,
      c.Exec("SELECT $1::bytea, $2::bytea, $3::bytea, length($1)",
             PgParams().AddBytea(all).AddBytea("").AddNull(kPgByteaOid)));
  ASSERT_EQ(r.rows(), 1);
  EXPECT_THAT(r.Bytea(0, 0), IsOkAndHolds(absl::string_view(all)));
  EXPECT_THAT(r.Bytea(0, 1), IsOkAndHolds(absl::string_view("")));
  EXPECT_THAT(r.IsNull(0, 1), IsOkAndHolds(false));
  EXPECT_THAT(r.IsNull(0, 2), IsOkAndHolds(true));
  EXPECT_THAT(r.Bytea(0, 2), StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT(r.Int8(0, 3), IsOkAndHolds(256));
}

TEST_F(PgConnectionTest, Int8ExtremesAndTextRoundTrip) {
  PgConnection c = Connect();
  for (int64_t v : {std::numeric_limits<int64_t>::min(),
                    std::numeric_limits<int64_t>::max(), int64_t{0},
                    int64_t{-1}, int64_t{1} << 40}) {
    CARDVAULT_ASSERT_OK_AND_ASSIGN(
        PgResult r,
        c.Exec("SELECT $1::int8, ($1::int8)::text", PgParams().AddInt8(v)));
    EXPECT_THAT(r.Int8(0, 0), IsOkAndHolds(v));
    EXPECT_THAT(r.Text(0, 1), IsOkAndHolds(absl::string_view(absl::StrCat(v))));
  }
  const std::string text = "caf\xc3\xa9 \xe2\x82\xac";
  CARDVAULT_ASSERT_OK_AND_ASSIGN(
      PgResult r,
      c.Exec("SELECT $1::text, -2::int4, -3::int2", PgParams().AddText(text)));
  EXPECT_THAT(r.Text(0, 0), IsOkAndHolds(absl::string_view(text)));
  EXPECT_THAT(r.Int8(0, 1), IsOkAndHolds(-2));
  EXPECT_THAT(r.Int8(0, 2), IsOkAndHolds(-3));
}

TEST_F(PgConnectionTest, AccessorsCheckTypeAndRange) {
  PgConnection c = Connect();
  CARDVAULT_ASSERT_OK_AND_ASSIGN(PgResult r,
                                 c.Exec("SELECT 1::int8, true, 'x'::text"));
  EXPECT_THAT(r.Bytea(0, 0), StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT(r.Bool(0, 1), IsOkAndHolds(true));
  EXPECT_THAT(r.Int8(0, 2), StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT(r.Int8(1, 0), StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_THAT(r.Int8(0, 3), StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_THAT(r.Int8(-1, 0), StatusIs(absl::StatusCode::kOutOfRange));
}

TEST_F(PgConnectionTest, ArrayEncodingIsArraySend) {
  PgConnection c = Connect();
  const std::vector<std::string> keys = {"a", "", AllByteValues()};
  const std::vector<int64_t> numbers = {std::numeric_limits<int64_t>::min(), 7};
  PgParams params;
  params.AddByteaArray(keys).AddInt8Array(numbers).AddByteaArray(
      std::vector<std::string>{});
  CARDVAULT_ASSERT_OK_AND_ASSIGN(
      PgResult r, c.Exec("SELECT array_send($1::bytea[]), "
                         "array_send($2::int8[]), array_send($3::bytea[])",
                         params));
  EXPECT_THAT(r.Bytea(0, 0),
              IsOkAndHolds(absl::string_view(params.encoded(0))));
  EXPECT_THAT(r.Bytea(0, 1),
              IsOkAndHolds(absl::string_view(params.encoded(1))));
  EXPECT_THAT(r.Bytea(0, 2),
              IsOkAndHolds(absl::string_view(params.encoded(2))));
}

TEST_F(PgConnectionTest, ArraysOfZeroOneAndThousandThroughUnnestAndAny) {
  PgConnection c = Connect();
  ASSERT_THAT(c.Exec("CREATE TABLE arrays (k bytea PRIMARY KEY, v bytea NOT "
                     "NULL, n int8 NOT NULL)"),
              IsOk());
  for (int count : {0, 1, 1000}) {
    ASSERT_THAT(c.Exec("TRUNCATE arrays"), IsOk());
    std::vector<std::string> keys, values;
    std::vector<int64_t> numbers;
    for (int i = 0; i < count; ++i) {
      keys.push_back(absl::StrCat("key-", i, std::string(1, '\0'), "\xff"));
      values.push_back(std::string(i % 300, static_cast<char>(i)));
      numbers.push_back(int64_t{i} * -1000000007);
    }
    CARDVAULT_ASSERT_OK_AND_ASSIGN(
        PgResult inserted,
        c.Exec(
            "INSERT INTO arrays SELECT * FROM unnest($1::bytea[], "
            "$2::bytea[], $3::int8[])",
            PgParams().AddByteaArray(keys).AddByteaArray(values).AddInt8Array(
                numbers)));
    EXPECT_EQ(inserted.affected_rows(), count);
    // Every other key, and one that is absent.
    std::vector<absl::string_view> wanted = {"absent"};
    for (int i = 0; i < count; i += 2) wanted.push_back(keys[i]);
    CARDVAULT_ASSERT_OK_AND_ASSIGN(
        PgResult found,
        c.Exec("SELECT k, v, n FROM arrays WHERE k = ANY($1::bytea[]) "
               "ORDER BY n DESC",
               PgParams().AddByteaArray(wanted)));
    ASSERT_EQ(found.rows(), (count + 1) / 2);
    for (int row = 0; row < found.rows(); ++row) {
      const int i = 2 * row;
      EXPECT_THAT(found.Bytea(row, 0),
                  IsOkAndHolds(absl::string_view(keys[i])));
      EXPECT_THAT(found.Bytea(row, 1),
                  IsOkAndHolds(absl::string_view(values[i])));
      EXPECT_THAT(found.Int8(row, 2), IsOkAndHolds(numbers[i]));
    }
  }
  ASSERT_THAT(c.Exec("DROP TABLE arrays"), IsOk());
}

TEST_F(PgConnectionTest, PipelineErrorSkipsTheRestThenConnectionIsUsable) {
  PgConnection c = Connect();
  c.Queue("SELECT $1::int8", PgParams().AddInt8(1));
  c.Queue("SELECT 1 / $1::int8", PgParams().AddInt8(0));
  c.Queue("SELECT $1::int8", PgParams().AddInt8(3));
  EXPECT_EQ(c.queued(), 3u);
  std::vector<PgStatementResult> results = c.Sync();
  EXPECT_EQ(c.queued(), 0u);
  ASSERT_EQ(results.size(), 3u);
  EXPECT_THAT(results[0].result.Int8(0, 0), IsOkAndHolds(1));
  EXPECT_THAT(Codes(results), ElementsAre(absl::StatusCode::kOk,
                                          absl::StatusCode::kInvalidArgument,
                                          absl::StatusCode::kAborted));
  EXPECT_THAT(SqlStateOf(results[1].status), Optional(std::string("22012")));
  EXPECT_EQ(SqlStateOf(results[2].status), std::nullopt);
  EXPECT_THAT(FirstError(results), StatusIs(absl::StatusCode::kInvalidArgument,
                                            HasSubstr("division_by_zero")));
  EXPECT_TRUE(c.healthy());

  // The connection goes on: outside and inside a pipeline.
  CARDVAULT_ASSERT_OK_AND_ASSIGN(PgResult r, c.Exec("SELECT 5::int8"));
  EXPECT_THAT(r.Int8(0, 0), IsOkAndHolds(5));
  c.Queue("SELECT 6::int8");
  c.Queue("SELECT 7::int8");
  results = c.Sync();
  ASSERT_THAT(FirstError(results), IsOk());
  EXPECT_THAT(results[1].result.Int8(0, 0), IsOkAndHolds(7));
  EXPECT_THAT(c.Sync(), ::testing::IsEmpty());
}

TEST_F(PgConnectionTest, ExecRefusedWhileStatementsAreQueued) {
  PgConnection c = Connect();
  c.Queue("SELECT 1");
  EXPECT_THAT(c.Exec("SELECT 2"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(FirstError(c.Sync()), IsOk());
  EXPECT_THAT(c.Exec("SELECT 2"), IsOk());
}

TEST_F(PgConnectionTest, LocalErrorSkipsTheRestOfThePipeline) {
  PgConnection c = Connect();
  PgParams too_many;
  for (int i = 0; i <= kPgMaxParams; ++i) too_many.AddInt8(i);
  c.Queue("SELECT 1");
  c.Queue("SELECT $1::int8", too_many);
  c.Queue("SELECT 3");
  EXPECT_THAT(Codes(c.Sync()), ElementsAre(absl::StatusCode::kOk,
                                           absl::StatusCode::kInvalidArgument,
                                           absl::StatusCode::kAborted));
  EXPECT_THAT(c.Exec("SELECT 1"), IsOk());
}

TEST_F(PgConnectionTest, FiveThousandStatementPipelineDoesNotDeadlock) {
  PgConnection c = Connect();
  // Each statement sends 1 KiB and gets it back: 5 MB each way, far more
  // than the socket buffers, with no read before everything is queued.
  const std::string kib(1024, 'x');
  constexpr int kStatements = 5000;
  for (int i = 0; i < kStatements; ++i) {
    c.Queue("SELECT $1::bytea, $2::int8", PgParams().AddBytea(kib).AddInt8(i));
  }
  std::vector<PgStatementResult> results = c.Sync();
  ASSERT_EQ(results.size(), static_cast<size_t>(kStatements));
  ASSERT_THAT(FirstError(results), IsOk());
  for (int i = 0; i < kStatements; i += 997) {
    EXPECT_THAT(results[i].result.Int8(0, 1), IsOkAndHolds(i));
    EXPECT_THAT(results[i].result.Bytea(0, 0),
                IsOkAndHolds(absl::string_view(kib)));
  }
}

TEST_F(PgConnectionTest, MultiMegabyteParametersDoNotDeadlock) {
  PgConnection c = Connect();
  std::string big(8 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 31);
  for (int i = 0; i < 4; ++i) {
    c.Queue("SELECT $1::bytea, md5($1)", PgParams().AddBytea(big));
  }
  std::vector<PgStatementResult> results = c.Sync();
  ASSERT_THAT(FirstError(results), IsOk());
  for (const PgStatementResult& r : results) {
    CARDVAULT_ASSERT_OK_AND_ASSIGN(absl::string_view echoed,
                                   r.result.Bytea(0, 0));
    EXPECT_TRUE(echoed == big);
  }
  CARDVAULT_ASSERT_OK_AND_ASSIGN(
      PgResult r, c.Exec("SELECT length($1::bytea)", PgParams().AddBytea(big)));
  EXPECT_THAT(r.Int8(0, 0), IsOkAndHolds(static_cast<int64_t>(big.size())));
}

TEST_F(PgConnectionTest, TransactionSpansSyncs) {
  PgConnection c = Connect();
  PgConnection other = Connect();
  ASSERT_THAT(c.Exec("CREATE TABLE spans (k int8 PRIMARY KEY)"), IsOk());
  c.Queue("BEGIN");
  c.Queue("INSERT INTO spans VALUES ($1)", PgParams().AddInt8(1));
  ASSERT_THAT(FirstError(c.Sync()), IsOk());
  EXPECT_EQ(c.transaction_status(), PQTRANS_INTRANS);
  CARDVAULT_ASSERT_OK_AND_ASSIGN(PgResult before,
                                 other.Exec("SELECT count(*) FROM spans"));
  EXPECT_THAT(before.Int8(0, 0), IsOkAndHolds(0));

  c.Queue("INSERT INTO spans VALUES ($1)", PgParams().AddInt8(2));
  c.Queue("COMMIT");
  std::vector<PgStatementResult> results = c.Sync();
  ASSERT_THAT(FirstError(results), IsOk());
  EXPECT_EQ(results[1].result.command_tag(), "COMMIT");
  EXPECT_EQ(c.transaction_status(), PQTRANS_IDLE);
  CARDVAULT_ASSERT_OK_AND_ASSIGN(PgResult after,
                                 other.Exec("SELECT count(*) FROM spans"));
  EXPECT_THAT(after.Int8(0, 0), IsOkAndHolds(2));
  ASSERT_THAT(c.Exec("DROP TABLE spans"), IsOk());
}

TEST_F(PgConnectionTest, CommitOfFailedTransactionIsAbortedNotOk) {
  PgConnection c = Connect();
  ASSERT_THAT(c.Exec("CREATE TABLE failed (k int8 PRIMARY KEY)"), IsOk());
  ASSERT_THAT(c.Exec("INSERT INTO failed VALUES (1)"), IsOk());
  c.Queue("BEGIN");
  c.Queue("INSERT INTO failed VALUES (2)");
  c.Queue("INSERT INTO failed VALUES (1)");
  EXPECT_THAT(Codes(c.Sync()),
              ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk,
                          absl::StatusCode::kAlreadyExists));
  EXPECT_EQ(c.transaction_status(), PQTRANS_INERROR);
  // PostgreSQL answers this COMMIT with the tag ROLLBACK and no error.
  EXPECT_THAT(c.Exec("COMMIT"),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("rolled back")));
  EXPECT_EQ(c.transaction_status(), PQTRANS_IDLE);
  CARDVAULT_ASSERT_OK_AND_ASSIGN(PgResult r,
                                 c.Exec("SELECT count(*) FROM failed"));
  EXPECT_THAT(r.Int8(0, 0), IsOkAndHolds(1));

  // The same inside one pipeline: statements after the error are skipped,
  // so the COMMIT never runs and the transaction stays failed.
  c.Queue("BEGIN");
  c.Queue("INSERT INTO failed VALUES (1)");
  c.Queue("COMMIT");
  EXPECT_THAT(Codes(c.Sync()), ElementsAre(absl::StatusCode::kOk,
                                           absl::StatusCode::kAlreadyExists,
                                           absl::StatusCode::kAborted));
  EXPECT_EQ(c.transaction_status(), PQTRANS_INERROR);
  EXPECT_THAT(c.Exec("SELECT 1"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(c.Exec("ROLLBACK"), IsOk());
  ASSERT_THAT(c.Exec("DROP TABLE failed"), IsOk());
}

TEST_F(PgConnectionTest, FailedImplicitCommitAtSyncFailsEveryStatement) {
  PgConnection c = Connect();
  ASSERT_THAT(c.Exec("CREATE TABLE deferred (k int8 UNIQUE DEFERRABLE "
                     "INITIALLY DEFERRED)"),
              IsOk());
  // No BEGIN: the statements are one implicit transaction, and the unique
  // check runs when the sync point commits it.
  c.Queue("INSERT INTO deferred VALUES (1)");
  c.Queue("INSERT INTO deferred VALUES (1)");
  std::vector<PgStatementResult> results = c.Sync();
  EXPECT_THAT(Codes(results), ElementsAre(absl::StatusCode::kAlreadyExists,
                                          absl::StatusCode::kAlreadyExists));
  EXPECT_TRUE(c.healthy());
  CARDVAULT_ASSERT_OK_AND_ASSIGN(PgResult r,
                                 c.Exec("SELECT count(*) FROM deferred"));
  EXPECT_THAT(r.Int8(0, 0), IsOkAndHolds(0));
  ASSERT_THAT(c.Exec("DROP TABLE deferred"), IsOk());
}

struct Mapping {
  const char* sqlstate;
  absl::StatusCode code;
};

TEST_F(PgConnectionTest, RaisedSqlStatesMapToCodes) {
  PgConnection c = Connect();
  const Mapping mappings[] = {
      {"40001", absl::StatusCode::kAborted},
      {"40P01", absl::StatusCode::kAborted},
      {"26000", absl::StatusCode::kAborted},
      {"40003", absl::StatusCode::kUnknown},
      {"08007", absl::StatusCode::kUnknown},
      {"57014", absl::StatusCode::kUnknown},
      {"23505", absl::StatusCode::kAlreadyExists},
      {"23503", absl::StatusCode::kFailedPrecondition},
      {"08006", absl::StatusCode::kUnavailable},
      {"57P01", absl::StatusCode::kUnavailable},
      {"57P03", absl::StatusCode::kUnavailable},
      {"53300", absl::StatusCode::kUnavailable},
      {"25006", absl::StatusCode::kUnavailable},
      {"42P01", absl::StatusCode::kInternal},
      {"22001", absl::StatusCode::kInvalidArgument},
      {"22P03", absl::StatusCode::kInternal},
      {"25P02", absl::StatusCode::kFailedPrecondition},
      {"0A000", absl::StatusCode::kUnimplemented},
      {"XX001", absl::StatusCode::kDataLoss},
      {"P0001", absl::StatusCode::kInternal},
  };
  for (const Mapping& m : mappings) {
    SCOPED_TRACE(m.sqlstate);
    const absl::StatusOr<PgResult> r =
        c.Exec(absl::StrCat("DO $$ BEGIN RAISE EXCEPTION 'card %', '", kPan,
                            "' USING ERRCODE = '", m.sqlstate, "'; END $$"));
    EXPECT_THAT(r, StatusIs(m.code, HasSubstr(m.sqlstate)));
    EXPECT_THAT(r.status().message(), Not(HasSubstr(kPan)));
    EXPECT_THAT(SqlStateOf(r.status()), Optional(std::string(m.sqlstate)));
    EXPECT_EQ(CodeForSqlState(m.sqlstate), m.code);
  }
  EXPECT_TRUE(c.healthy());
}

TEST_F(PgConnectionTest, RealSerializationFailureIsAborted) {
  PgConnection a = Connect();
  PgConnection b = Connect();
  ASSERT_THAT(a.Exec("CREATE TABLE skew (k int8)"), IsOk());
  // Write skew: each reads what the other writes.
  for (PgConnection* c : {&a, &b}) {
    ASSERT_THAT(c->Exec("BEGIN ISOLATION LEVEL SERIALIZABLE"), IsOk());
    ASSERT_THAT(c->Exec("SELECT count(*) FROM skew"), IsOk());
    ASSERT_THAT(c->Exec("INSERT INTO skew VALUES (1)"), IsOk());
  }
  ASSERT_THAT(a.Exec("COMMIT"), IsOk());
  const absl::StatusOr<PgResult> commit = b.Exec("COMMIT");
  EXPECT_THAT(commit, StatusIs(absl::StatusCode::kAborted,
                               HasSubstr("serialization_failure")));
  EXPECT_THAT(SqlStateOf(commit.status()), Optional(std::string("40001")));
  ASSERT_THAT(a.Exec("DROP TABLE skew"), IsOk());
}

TEST_F(PgConnectionTest, ErrorsNeverEchoValues) {
  PgConnection c = Connect();
  ASSERT_THAT(c.Exec("CREATE TABLE pans (pan text PRIMARY KEY, b bytea "
                     "UNIQUE)"),
              IsOk());
  const PgParams insert = std::move(PgParams().AddText(kPan).AddBytea(kPan));
  ASSERT_THAT(c.Exec("INSERT INTO pans VALUES ($1, $2)", insert), IsOk());
  // Through Exec and through a pipeline.
  const absl::StatusOr<PgResult> dup =
      c.Exec("INSERT INTO pans VALUES ($1, $2)", insert);
  EXPECT_THAT(dup, StatusIs(absl::StatusCode::kAlreadyExists,
                            HasSubstr("unique_violation")));
  EXPECT_THAT(dup.status().message(), Not(HasSubstr(kPan)));
  EXPECT_THAT(ConstraintOf(dup.status()), Optional(std::string("pans_pkey")));
  EXPECT_THAT(dup.status().message(), HasSubstr("table pans"));
  EXPECT_THAT(std::string(dup.status().ToString()), Not(HasSubstr(kPan)));
  c.Queue("INSERT INTO pans VALUES ($1, $2)", insert);
  c.Queue("SELECT $1::text::int8", PgParams().AddText(absl::StrCat(kPan, "x")));
  std::vector<PgStatementResult> results = c.Sync();
  for (const PgStatementResult& r : results) {
    EXPECT_THAT(r.status.ToString(), Not(HasSubstr(kPan)));
  }
  // A cast that fails quotes its input in PostgreSQL's primary message.
  const absl::StatusOr<PgResult> cast = c.Exec(
      "SELECT $1::text::int8", PgParams().AddText(absl::StrCat(kPan, "x")));
  EXPECT_THAT(cast,
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("22P02")));
  EXPECT_THAT(cast.status().message(), Not(HasSubstr(kPan)));
  // Notices keep severity and SQLSTATE only, and do not reach stderr.
  ::testing::internal::CaptureStderr();
  const absl::StatusOr<PgResult> notice = c.Exec(
      absl::StrCat("DO $$ BEGIN RAISE NOTICE 'card %', '", kPan, "'; END $$"));
  EXPECT_THAT(::testing::internal::GetCapturedStderr(), Not(HasSubstr(kPan)));
  ASSERT_THAT(notice, IsOk());
  ASSERT_EQ(notice->notices().size(), 1u);
  EXPECT_EQ(notice->notices()[0].severity, "NOTICE");
  EXPECT_EQ(notice->notices()[0].sqlstate, "00000");
  ASSERT_THAT(c.Exec("DROP TABLE pans"), IsOk());
}

TEST_F(PgConnectionTest, ConnectionMessagesDropStatementReports) {
  // libpq's own connection message holds the DETAIL with the value;
  // FromPgConnection must not, in or out of pipeline mode.
  PGconn* raw = PQconnectdb(server_->conninfo().c_str());
  ASSERT_EQ(PQstatus(raw), CONNECTION_OK);
  PQclear(PQexec(raw, "CREATE TEMP TABLE t (pan text PRIMARY KEY)"));
  for (int i = 0; i < 2; ++i) {
    const char* values[] = {kPan};
    PQclear(PQexecParams(raw, "INSERT INTO t VALUES ($1)", 1, nullptr, values,
                         nullptr, nullptr, 0));
  }
  ASSERT_THAT(std::string(PQerrorMessage(raw)), HasSubstr(kPan));
  const absl::Status status = FromPgConnection(raw, "insert");
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(status.message(), Not(HasSubstr(kPan)));

  ASSERT_EQ(PQenterPipelineMode(raw), 1);
  const char* values[] = {kPan};
  PQsendQueryParams(raw, "INSERT INTO t VALUES ($1)", 1, nullptr, values,
                    nullptr, nullptr, 0);
  PQsendQueryParams(raw, "SELECT $1::int8", 1, nullptr, values, nullptr,
                    nullptr, 0);
  PQpipelineSync(raw);
  for (int i = 0; i < 10; ++i) {
    PGresult* r = PQgetResult(raw);
    if (r != nullptr && PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      break;
    }
    if (r != nullptr) {
      EXPECT_THAT(FromPgResult(r, "x").ToString(), Not(HasSubstr(kPan)));
    }
    PQclear(r);
  }
  EXPECT_THAT(FromPgConnection(raw, "pipeline").message(),
              Not(HasSubstr(kPan)));
  PQfinish(raw);
}

TEST_F(PgConnectionTest, ConnectNeverRepeatsThePassword) {
  const std::string secret = "NotTheRightPassword4111";
  const std::string wrong =
      absl::StrCat("host=127.0.0.1 port=", server_->port(),
                   " dbname=postgres user=cardvault password=", secret);
  absl::StatusOr<PgConnection> c = PgConnection::Connect(wrong);
  EXPECT_THAT(c, StatusIs(absl::StatusCode::kUnavailable,
                          HasSubstr("password authentication failed")));
  EXPECT_THAT(c.status().message(), Not(HasSubstr(secret)));

  // libpq's parse error would quote the text after the password.
  c = PgConnection::Connect(
      absl::StrCat("host=127.0.0.1 password=", secret, " ", secret));
  EXPECT_THAT(c, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(c.status().message(), Not(HasSubstr(secret)));

  c = PgConnection::Connect(
      absl::StrCat("host=127.0.0.1 port=", server_->port(),
                   " dbname=postgres user=cardvault passfile=/nonexistent"));
  EXPECT_THAT(c, StatusIs(absl::StatusCode::kUnauthenticated));

  c = PgConnection::Connect(absl::StrCat(
      "host=127.0.0.1 port=", testing::PickUnusedPort(), " connect_timeout=5"));
  EXPECT_THAT(c, StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(PgConnectionTest, ExecScriptRunsStatementsAtomically) {
  PgConnection c = Connect();
  ASSERT_THAT(c.ExecScript("CREATE TABLE s1 (k int8); CREATE TABLE s2 (k "
                           "int8); INSERT INTO s1 VALUES (1);"),
              IsOk());
  EXPECT_THAT(c.ExecScript("CREATE TABLE s3 (k int8); SELECT 1/0;"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      c.Exec("SELECT * FROM s3"),
      StatusIs(absl::StatusCode::kInternal, HasSubstr("undefined_table")));
  EXPECT_THAT(c.ExecScript("DROP TABLE s1; DROP TABLE s2"), IsOk());
  // A bug in our SQL says where it is.
  EXPECT_THAT(c.Exec("SELECT 1 FROM"),
              StatusIs(absl::StatusCode::kInternal,
                       HasSubstr("SQLSTATE 42601 (syntax_error), at character "
                                 "14")));
}

absl::Status Terminate(PgConnection& killer, int pid) {
  absl::StatusOr<PgResult> r =
      killer.Exec("SELECT pg_terminate_backend($1::int8::int4, 10000)",
                  PgParams().AddInt8(pid));
  if (!r.ok()) return r.status();
  absl::StatusOr<bool> done = r->Bool(0, 0);
  if (!done.ok()) return done.status();
  return *done ? absl::OkStatus() : absl::InternalError("not terminated");
}

TEST_F(PgConnectionTest, TerminatedConnectionIsUnavailable) {
  PgConnection killer = Connect();
  PgConnection c = Connect();
  ASSERT_THAT(c.Exec("SELECT 1"), IsOk());
  ASSERT_THAT(Terminate(killer, c.backend_pid()), IsOk());
  EXPECT_THAT(c.Exec("SELECT 1"), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_FALSE(c.healthy());
  EXPECT_THAT(c.Exec("SELECT 1"), StatusIs(absl::StatusCode::kUnavailable));
  c.Queue("SELECT 1");
  c.Queue("SELECT 2");
  EXPECT_THAT(Codes(c.Sync()), ElementsAre(absl::StatusCode::kUnavailable,
                                           absl::StatusCode::kAborted));

  // Terminated before a pipeline is read: the first statement meets the
  // loss, the second is skipped (ABORTED) or has no answer (UNAVAILABLE).
  PgConnection d = Connect();
  ASSERT_THAT(Terminate(killer, d.backend_pid()), IsOk());
  d.Queue("SELECT 1");
  d.Queue("SELECT 2");
  std::vector<PgStatementResult> lost = d.Sync();
  EXPECT_THAT(lost[0].status, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(lost[1].status, Not(IsOk()));
  EXPECT_THAT(FirstError(lost), StatusIs(absl::StatusCode::kUnavailable));

  // Terminated while a pipeline is in flight: no hang; the statement whose
  // answer had arrived is UNAVAILABLE too (the group's implicit commit is
  // unknown), the one that was running met the loss, the last was skipped.
  PgConnection e = Connect();
  const int pid = e.backend_pid();
  std::vector<PgStatementResult> results;
  std::thread reader([&] {
    e.Queue("SELECT 1");
    e.Queue("SELECT pg_sleep(30)");
    e.Queue("SELECT 3");
    results = e.Sync();
  });
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_THAT(Terminate(killer, pid), IsOk());
  reader.join();
  ASSERT_EQ(results.size(), 3u);
  EXPECT_THAT(results[0].status, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(results[1].status, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(results[2].status, Not(IsOk()));
  EXPECT_FALSE(e.healthy());
}

TEST_F(PgConnectionTest, MovedConnectionKeepsWorking) {
  PgConnection a = Connect();
  PgConnection b = std::move(a);
  EXPECT_THAT(b.Exec("DO $$ BEGIN RAISE NOTICE 'n'; END $$"), IsOk());
  EXPECT_THAT(a.Exec("SELECT 1"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  a = std::move(b);
  CARDVAULT_ASSERT_OK_AND_ASSIGN(
      PgResult r, a.Exec("DO $$ BEGIN RAISE NOTICE 'n'; END $$"));
  EXPECT_EQ(r.notices().size(), 1u);
}

// How many statements this session holds prepared with `sql` as their text.
int64_t PreparedCount(PgConnection& c, absl::string_view sql) {
  absl::StatusOr<PgResult> r = c.Exec(
      "SELECT count(*)::int8 FROM pg_prepared_statements WHERE "
      "statement = $1::text",
      PgParams().AddText(sql));
  EXPECT_THAT(r, IsOk());
  if (!r.ok()) return -1;
  absl::StatusOr<int64_t> n = r->Int8(0, 0);
  EXPECT_THAT(n, IsOk());
  return n.ok() ? *n : -1;
}

TEST_F(PgConnectionTest, EachTextIsParsedOncePerConnection) {
  PgConnection c = Connect();
  constexpr absl::string_view kSql = "SELECT $1::int8 + 1";
  for (int i = 0; i < 20; ++i) {
    EXPECT_THAT(c.Exec(kSql, PgParams().AddInt8(i)), IsOk());
    c.Queue(kSql, PgParams().AddInt8(i));
    c.Queue(kSql, PgParams().AddInt8(i + 1));
    EXPECT_EQ(c.queued(), 2u);
    std::vector<PgStatementResult> out = c.Sync();
    ASSERT_EQ(out.size(), 2u);
    EXPECT_THAT(out[1].status, IsOk());
    EXPECT_THAT(out[1].result.Int8(0, 0), IsOkAndHolds(i + 2));
  }
  EXPECT_EQ(PreparedCount(c, kSql), 1);
  // Another connection has its own.
  PgConnection other = Connect();
  EXPECT_EQ(PreparedCount(other, kSql), 0);
}

TEST_F(PgConnectionTest, ParseErrorIsItsStatementsError) {
  PgConnection c = Connect();
  EXPECT_THAT(c.Exec("SELEC 1"), StatusIs(absl::StatusCode::kInternal,
                                          HasSubstr("SQLSTATE 42601")));
  c.Queue("SELECT 1");
  c.Queue("SELEC 2");
  c.Queue("SELECT 3");
  std::vector<PgStatementResult> out = c.Sync();
  ASSERT_EQ(out.size(), 3u);
  EXPECT_THAT(out[0].status, IsOk());
  EXPECT_THAT(out[1].status, StatusIs(absl::StatusCode::kInternal,
                                      HasSubstr("SQLSTATE 42601")));
  EXPECT_THAT(out[2].status, StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(c.Exec("SELECT 4"), IsOk());
  EXPECT_EQ(PreparedCount(c, "SELEC 2"), 0);
}

// Prepared statements are not transactional: one parsed inside a
// transaction that rolls back stays usable.
TEST_F(PgConnectionTest, PreparedInRolledBackTransactionStaysUsable) {
  PgConnection c = Connect();
  constexpr absl::string_view kSql = "SELECT $1::int8 * 2";
  c.Queue("BEGIN");
  c.Queue(kSql, PgParams().AddInt8(2));
  c.Queue("SELECT 1/0");
  std::vector<PgStatementResult> out = c.Sync();
  ASSERT_EQ(out.size(), 3u);
  EXPECT_THAT(out[1].status, IsOk());
  EXPECT_THAT(out[2].status, Not(IsOk()));
  ASSERT_THAT(c.Exec("ROLLBACK"), IsOk());
  CARDVAULT_ASSERT_OK_AND_ASSIGN(PgResult r,
                                 c.Exec(kSql, PgParams().AddInt8(5)));
  EXPECT_THAT(r.Int8(0, 0), IsOkAndHolds(10));
  EXPECT_EQ(PreparedCount(c, kSql), 1);
}

// A pooler's DEALLOCATE ALL (or DISCARD ALL) forgets them: Exec prepares
// again by itself; a pipeline fails once with ABORTED (retry) and then
// prepares again.
TEST_F(PgConnectionTest, ForgottenStatementsArePreparedAgain) {
  PgConnection c = Connect();
  constexpr absl::string_view kSql = "SELECT $1::int8 - 1";
  ASSERT_THAT(c.Exec(kSql, PgParams().AddInt8(1)), IsOk());
  ASSERT_THAT(c.ExecScript("DEALLOCATE ALL"), IsOk());
  CARDVAULT_ASSERT_OK_AND_ASSIGN(PgResult r,
                                 c.Exec(kSql, PgParams().AddInt8(8)));
  EXPECT_THAT(r.Int8(0, 0), IsOkAndHolds(7));

  ASSERT_THAT(c.ExecScript("DEALLOCATE ALL"), IsOk());
  c.Queue(kSql, PgParams().AddInt8(3));
  std::vector<PgStatementResult> out = c.Sync();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_THAT(out[0].status, StatusIs(absl::StatusCode::kAborted,
                                      HasSubstr("SQLSTATE 26000")));
  c.Queue(kSql, PgParams().AddInt8(3));
  out = c.Sync();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_THAT(out[0].result.Int8(0, 0), IsOkAndHolds(2));
}

// Inside a transaction a statement the server forgot fails the
// transaction: it is ABORTED (roll back, retry the whole), not prepared
// again into the failed transaction (25P02, FAILED_PRECONDITION).
TEST_F(PgConnectionTest, ForgottenStatementInTransactionIsAborted) {
  PgConnection c = Connect();
  constexpr absl::string_view kSql = "SELECT $1::int8 + 7";
  ASSERT_THAT(c.Exec("BEGIN"), IsOk());
  ASSERT_THAT(c.Exec(kSql, PgParams().AddInt8(1)), IsOk());
  ASSERT_THAT(c.ExecScript("DEALLOCATE ALL"), IsOk());
  EXPECT_THAT(c.Exec(kSql, PgParams().AddInt8(1)),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("26000")));
  EXPECT_EQ(c.transaction_status(), PQTRANS_INERROR);
  ASSERT_THAT(c.Exec("ROLLBACK"), IsOk());
  // Outside a transaction it is still prepared again by itself.
  CARDVAULT_ASSERT_OK_AND_ASSIGN(PgResult r,
                                 c.Exec(kSql, PgParams().AddInt8(1)));
  EXPECT_THAT(r.Int8(0, 0), IsOkAndHolds(8));
}

// Past kPgMaxPreparedStatements distinct texts, statements still run
// (unnamed) and the session holds no more than the bound.
TEST_F(PgConnectionTest, PreparedStatementsAreBounded) {
  PgConnection c = Connect();
  for (size_t i = 0; i < kPgMaxPreparedStatements + 20; ++i) {
    CARDVAULT_ASSERT_OK_AND_ASSIGN(
        PgResult r, c.Exec(absl::StrCat("SELECT ", i, "::int8")));
    EXPECT_THAT(r.Int8(0, 0), IsOkAndHolds(static_cast<int64_t>(i)));
  }
  CARDVAULT_ASSERT_OK_AND_ASSIGN(
      PgResult r, c.Exec("SELECT count(*)::int8 FROM pg_prepared_statements"));
  EXPECT_THAT(r.Int8(0, 0),
              IsOkAndHolds(static_cast<int64_t>(kPgMaxPreparedStatements)));
}

// A plan that must not change its result type (0A000, after an ALTER) is
// forgotten by this side but kept by the server: however often it
// happens, the session holds no more than the bound.
TEST_F(PgConnectionTest, ChangedResultTypeKeepsTheBound) {
  PgConnection c = Connect();
  ASSERT_THAT(c.Exec("CREATE TEMP TABLE shape (c0 int8)"), IsOk());
  constexpr absl::string_view kSql = "SELECT * FROM shape";
  for (size_t i = 1; i <= kPgMaxPreparedStatements + 10; ++i) {
    ASSERT_THAT(c.Exec(kSql), IsOk());
    ASSERT_THAT(c.ExecScript(
                    absl::StrCat("ALTER TABLE shape ADD COLUMN c", i, " int8")),
                IsOk());
    // Fails once per ALTER while named; unnamed once the bound is reached.
    absl::StatusOr<PgResult> after = c.Exec(kSql);
    if (!after.ok()) {
      EXPECT_THAT(after, StatusIs(absl::StatusCode::kUnimplemented,
                                  HasSubstr("0A000")));
    }
    ASSERT_TRUE(c.healthy());
  }
  CARDVAULT_ASSERT_OK_AND_ASSIGN(PgResult rows, c.Exec(kSql));
  EXPECT_EQ(rows.rows(), 0);
  CARDVAULT_ASSERT_OK_AND_ASSIGN(
      PgResult r, c.Exec("SELECT count(*)::int8 FROM pg_prepared_statements"));
  CARDVAULT_ASSERT_OK_AND_ASSIGN(int64_t n, r.Int8(0, 0));
  EXPECT_LE(n, static_cast<int64_t>(kPgMaxPreparedStatements));
}

// A cancelled wait for a synchronous standby leaves a commit that exists on
// this server only; PostgreSQL reports it as success with a warning.
TEST(PgConnectionSyncReplicationTest, CancelledStandbyWaitIsUnknown) {
  auto server = PostgresServer::Start(
      {.config_lines = {"synchronous_standby_names = 'nobody'"}});
  ASSERT_THAT(server, IsOk());
  CARDVAULT_ASSERT_OK_AND_ASSIGN(PgConnection c,
                                 PgConnection::Connect((*server)->conninfo()));
  CARDVAULT_ASSERT_OK_AND_ASSIGN(PgConnection killer,
                                 PgConnection::Connect((*server)->conninfo()));
  ASSERT_THAT(c.Exec("SET synchronous_commit = local"), IsOk());
  ASSERT_THAT(c.Exec("CREATE TABLE w (k int8)"), IsOk());
  ASSERT_THAT(c.Exec("SET synchronous_commit = on"), IsOk());

  const auto cancel_when_waiting = [&](int pid) {
    for (int i = 0; i < 500; ++i) {
      absl::StatusOr<PgResult> r = killer.Exec(
          "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = "
          "$1::int8::int4 AND wait_event = 'SyncRep'",
          PgParams().AddInt8(pid));
      if (r.ok() && r->rows() == 1) return;
      absl::SleepFor(absl::Milliseconds(10));
    }
    ADD_FAILURE() << "never saw the wait for the standby";
    // Let the waiting thread go (its statement then fails).
    (void)killer.Exec("SELECT pg_terminate_backend($1::int8::int4)",
                      PgParams().AddInt8(pid));
  };
  const int pid = c.backend_pid();
  absl::StatusOr<PgResult> autocommit;
  std::thread t1([&] { autocommit = c.Exec("INSERT INTO w VALUES (1)"); });
  cancel_when_waiting(pid);
  t1.join();
  EXPECT_THAT(autocommit, StatusIs(absl::StatusCode::kUnknown));
  EXPECT_THAT(SqlStateOf(autocommit.status()), Optional(std::string("01000")));

  std::vector<PgStatementResult> results;
  std::thread t2([&] {
    c.Queue("BEGIN");
    c.Queue("INSERT INTO w VALUES (2)");
    c.Queue("COMMIT");
    results = c.Sync();
  });
  cancel_when_waiting(pid);
  t2.join();
  EXPECT_THAT(Codes(results),
              ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk,
                          absl::StatusCode::kUnknown));
  // Both are visible here all the same.
  CARDVAULT_ASSERT_OK_AND_ASSIGN(PgResult r,
                                 killer.Exec("SELECT count(*) FROM w"));
  EXPECT_THAT(r.Int8(0, 0), IsOkAndHolds(2));
}

TEST(PostgresServerTest, KeepsDataAcrossKillStopAndStart) {
  auto started = PostgresServer::Start(
      {.config_lines = {"log_statement = all"}, .database = "keep"});
  ASSERT_THAT(started, IsOk());
  std::unique_ptr<PostgresServer> server = *std::move(started);
  const int port = server->port();
  EXPECT_TRUE(
      std::filesystem::exists(server->data_directory() + "/PG_VERSION"));
  EXPECT_THAT(server->conninfo(), Not(HasSubstr(server->password())));
  {
    CARDVAULT_ASSERT_OK_AND_ASSIGN(PgConnection c,
                                   PgConnection::Connect(server->conninfo()));
    ASSERT_THAT(c.Exec("CREATE TABLE k (v text)"), IsOk());
    ASSERT_THAT(c.Exec("INSERT INTO k VALUES ('before-kill')"), IsOk());
    server->Kill();
    EXPECT_FALSE(server->running());
    EXPECT_THAT(c.Exec("SELECT 1"), StatusIs(absl::StatusCode::kUnavailable));
  }
  ASSERT_THAT(server->Start(), IsOk());
  {
    CARDVAULT_ASSERT_OK_AND_ASSIGN(PgConnection c,
                                   PgConnection::Connect(server->conninfo()));
    ASSERT_THAT(c.Exec("INSERT INTO k VALUES ('before-stop')"), IsOk());
  }
  ASSERT_THAT(server->Restart(), IsOk());
  EXPECT_EQ(server->port(), port);
  CARDVAULT_ASSERT_OK_AND_ASSIGN(PgConnection c,
                                 PgConnection::Connect(server->conninfo()));
  CARDVAULT_ASSERT_OK_AND_ASSIGN(PgResult r,
                                 c.Exec("SELECT v FROM k ORDER BY v"));
  ASSERT_EQ(r.rows(), 2);
  EXPECT_THAT(r.Text(0, 0), IsOkAndHolds("before-kill"));
  EXPECT_THAT(r.Text(1, 0), IsOkAndHolds("before-stop"));
  // log_statement = all reached the log (statement text, not parameters).
  EXPECT_THAT(testing::ReadFileOrEmpty(server->log_file()),
              HasSubstr("INSERT INTO k VALUES ('before-stop')"));
  ASSERT_THAT(server->Stop(), IsOk());
  const std::string dir = server->dir();
  server.reset();
  EXPECT_FALSE(std::filesystem::exists(dir));
}

}  // namespace
}  // namespace cardvault::storage
