// The physical anchor of the PostgreSQL benchmarks (docs/benchmarks.md):
// the fastest a client can make rows of a token's size durable on a given
// PostgreSQL server, with plain libpq and nothing of the vault. Each of
// --connections threads commits transactions of --group rows (one
// multi-row INSERT of random keys and values, like a group commit of the
// vault's store) in pipeline mode, --in_flight transactions at a time, with
// the server's durability settings (synchronous_commit as configured).
// Prints one JSON line: rows and transactions per second.
//
//   cardvault-pg-anchor --conninfo_file=F --connections=4 --group=16
#include <libpq-fe.h>

#include <atomic>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

ABSL_FLAG(std::string, conninfo_file, "",
          "File holding the libpq connection string.");
ABSL_FLAG(int, connections, 4, "Connections, one thread each.");
ABSL_FLAG(int, group, 16, "Rows per transaction.");
ABSL_FLAG(int, in_flight, 1, "Transactions pipelined per connection.");
ABSL_FLAG(int, key_bytes, 32, "Bytes of each row's key.");
ABSL_FLAG(int, value_bytes, 160, "Bytes of each row's value.");
ABSL_FLAG(double, duration_seconds, 10, "Measured time.");
ABSL_FLAG(std::string, label, "", "Free text copied into the JSON line.");

namespace {

constexpr char kInsert[] =
    "INSERT INTO cardvault_anchor (k, v) SELECT * FROM "
    "unnest($1::bytea[], $2::bytea[])";

// `values` as a bytea[] literal in text form ("{\"\\\\x..\",...}").
std::string ByteaArray(const std::vector<std::string>& values) {
  std::string out = "{";
  for (size_t i = 0; i < values.size(); ++i) {
    absl::StrAppend(&out, i == 0 ? "" : ",", "\"\\\\x");
    for (unsigned char c : values[i]) absl::StrAppendFormat(&out, "%02x", c);
    out += "\"";
  }
  return out + "}";
}

bool Ok(PGresult* r) {
  const ExecStatusType s = PQresultStatus(r);
  return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK ||
         s == PGRES_PIPELINE_SYNC;
}

// One connection's loop: returns the transactions committed.
uint64_t RunConnection(const std::string& conninfo, int index,
                       const std::atomic<bool>& stop) {
  PGconn* conn = PQconnectdb(conninfo.c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    std::cerr << "connect: " << PQerrorMessage(conn);
    PQfinish(conn);
    return 0;
  }
  std::mt19937_64 rng(20261207 + index);
  auto random_bytes = [&](int n) {
    std::string s(n, '\0');
    for (char& c : s) c = static_cast<char>(rng());
    return s;
  };
  const int group = absl::GetFlag(FLAGS_group);
  const int in_flight = absl::GetFlag(FLAGS_in_flight);
  if (PQenterPipelineMode(conn) != 1) {
    std::cerr << "pipeline mode: " << PQerrorMessage(conn);
    PQfinish(conn);
    return 0;
  }
  uint64_t committed = 0;
  while (!stop.load()) {
    for (int t = 0; t < in_flight; ++t) {
      std::vector<std::string> keys, values;
      for (int i = 0; i < group; ++i) {
        keys.push_back(random_bytes(absl::GetFlag(FLAGS_key_bytes)));
        values.push_back(random_bytes(absl::GetFlag(FLAGS_value_bytes)));
      }
      const std::string k = ByteaArray(keys);
      const std::string v = ByteaArray(values);
      const char* params[2] = {k.c_str(), v.c_str()};
      PQsendQueryParams(conn, "BEGIN", 0, nullptr, nullptr, nullptr, nullptr,
                        0);
      PQsendQueryParams(conn, kInsert, 2, nullptr, params, nullptr, nullptr, 0);
      PQsendQueryParams(conn, "COMMIT", 0, nullptr, nullptr, nullptr, nullptr,
                        0);
    }
    PQpipelineSync(conn);
    // Three statements per transaction, then the sync.
    int results = 0;
    bool failed = false;
    while (results < 3 * in_flight + 1) {
      PGresult* r = PQgetResult(conn);
      if (r == nullptr) {  // end of one statement's results
        if (PQstatus(conn) != CONNECTION_OK) {
          failed = true;
          break;
        }
        continue;
      }
      if (!Ok(r)) {
        std::cerr << "statement: " << PQresultErrorMessage(r);
        failed = true;
      }
      const bool sync = PQresultStatus(r) == PGRES_PIPELINE_SYNC;
      PQclear(r);
      ++results;
      if (sync) break;
    }
    if (failed) break;
    committed += in_flight;
  }
  PQfinish(conn);
  return committed;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::ifstream in(absl::GetFlag(FLAGS_conninfo_file));
  std::stringstream text;
  text << in.rdbuf();
  const std::string conninfo(absl::StripAsciiWhitespace(text.str()));
  if (conninfo.empty()) {
    std::cerr << "--conninfo_file is required\n";
    return 2;
  }
  {
    PGconn* setup = PQconnectdb(conninfo.c_str());
    if (PQstatus(setup) != CONNECTION_OK) {
      std::cerr << "connect: " << PQerrorMessage(setup);
      return 1;
    }
    for (const char* sql :
         {"DROP TABLE IF EXISTS cardvault_anchor",
          "CREATE TABLE cardvault_anchor (k BYTEA PRIMARY KEY, v BYTEA NOT "
          "NULL)"}) {
      PGresult* r = PQexec(setup, sql);
      if (!Ok(r)) {
        std::cerr << sql << ": " << PQresultErrorMessage(r);
        return 1;
      }
      PQclear(r);
    }
    PQfinish(setup);
  }
  const int connections = std::max(1, absl::GetFlag(FLAGS_connections));
  std::atomic<bool> stop{false};
  std::vector<uint64_t> committed(connections, 0);
  std::vector<std::thread> threads;
  const absl::Time start = absl::Now();
  for (int i = 0; i < connections; ++i) {
    threads.emplace_back(
        [&, i] { committed[i] = RunConnection(conninfo, i, stop); });
  }
  absl::SleepFor(absl::Seconds(absl::GetFlag(FLAGS_duration_seconds)));
  stop = true;
  for (std::thread& t : threads) t.join();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  uint64_t transactions = 0;
  for (uint64_t c : committed) transactions += c;
  const double tps = transactions / seconds;
  std::cout << absl::StrFormat(
      "{\"tool\":\"pg-anchor\",\"label\":\"%s\",\"connections\":%d,"
      "\"group\":%d,\"in_flight\":%d,\"rows_per_second\":%.0f,"
      "\"transactions_per_second\":%.0f}\n",
      absl::GetFlag(FLAGS_label), connections, absl::GetFlag(FLAGS_group),
      absl::GetFlag(FLAGS_in_flight), tps * absl::GetFlag(FLAGS_group), tps);
  return transactions == 0 ? 1 : 0;
}
