#include "server/storage/postgres_schema.h"

#include "absl/strings/str_cat.h"
#include "server/storage/pg_connection.h"
#include "server/storage/pg_status.h"
#include "server/storage/postgres_store.h"

namespace cardvault::storage {
namespace {

std::string TokenDataTable(absl::string_view name) {
  return absl::StrCat("CREATE TABLE ", name,
                      " (k BYTEA PRIMARY KEY, v BYTEA NOT NULL, "
                      "expires_ms BIGINT)");
}

std::string ExpiryIndex(absl::string_view name) {
  return absl::StrCat("CREATE INDEX ", name, "_expiry ON ", name,
                      " (expires_ms) WHERE expires_ms IS NOT NULL");
}

}  // namespace

const std::vector<Migration>& PostgresMigrations() {
  static const std::vector<Migration>* migrations = new std::vector<Migration>{
      {.version = 1,
       .description = "token data, keys, counters and the audit chain",
       .statements =
           {
               TokenDataTable("tokens"),
               ExpiryIndex("tokens"),
               TokenDataTable("pan_index"),
               ExpiryIndex("pan_index"),
               TokenDataTable("idempotency"),
               ExpiryIndex("idempotency"),
               "CREATE TABLE wrapped_keys (id BYTEA PRIMARY KEY, record BYTEA "
               "NOT NULL)",
               "CREATE TABLE counters (id BYTEA PRIMARY KEY, n BIGINT NOT "
               "NULL)",
               "CREATE TABLE audit_records (seq BIGINT PRIMARY KEY, record "
               "BYTEA NOT NULL)",
               "CREATE TABLE audit_head (id INT PRIMARY KEY CHECK (id = 1), "
               "seq BIGINT NOT NULL, mac BYTEA NOT NULL)",
               "INSERT INTO audit_head (id, seq, mac) VALUES (1, 0, '')",
               "CREATE TABLE audit_anchor (id INT PRIMARY KEY CHECK (id = 1), "
               "anchor BYTEA NOT NULL)",
           }},
      {.version = 2,
       .description = "shared state of the nodes: leases, reserved uses, "
                      "key-admin proposals",
       .statements = {TokenDataTable("shared_state")}},
  };
  return *migrations;
}

absl::StatusOr<MigrationReport> MigratePostgres(absl::string_view conninfo) {
  absl::StatusOr<PgConnection> conn =
      PgConnection::Connect(std::string(conninfo));
  if (!conn.ok()) return conn.status();
  // The version row, created once; its lock serialises migrations.
  for (const char* sql :
       {"CREATE TABLE IF NOT EXISTS cardvault_schema (id INT PRIMARY KEY "
        "CHECK (id = 1), version INT NOT NULL, updated_at TIMESTAMPTZ NOT "
        "NULL DEFAULT now())",
        "CREATE TABLE IF NOT EXISTS cardvault_migrations (version INT "
        "PRIMARY KEY, description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT "
        "NULL DEFAULT now())",
        "INSERT INTO cardvault_schema (id, version) VALUES (1, 0) ON "
        "CONFLICT (id) DO NOTHING"}) {
    if (absl::StatusOr<PgResult> r = conn->Exec(sql); !r.ok()) {
      return r.status();
    }
  }
  MigrationReport report;
  bool first = true;
  for (const Migration& m : PostgresMigrations()) {
    if (absl::StatusOr<PgResult> r = conn->Exec("BEGIN"); !r.ok()) {
      return r.status();
    }
    absl::StatusOr<PgResult> version = conn->Exec(
        "SELECT version FROM cardvault_schema WHERE id = 1 FOR UPDATE");
    if (!version.ok()) return version.status();
    absl::StatusOr<int64_t> found = version->Int8(0, 0);
    if (!found.ok()) return found.status();
    const int64_t now = *found;
    if (first) {
      report.from_version = static_cast<int>(now);
      first = false;
    }
    if (now > kPostgresSchemaVersion) {
      (void)conn->Exec("ROLLBACK");
      return absl::FailedPreconditionError(
          absl::StrCat("the database's schema is version ", now,
                       ", newer than this build's ", kPostgresSchemaVersion));
    }
    if (now >= m.version) {
      (void)conn->Exec("ROLLBACK");
      continue;
    }
    for (const std::string& sql : m.statements) {
      if (absl::StatusOr<PgResult> r = conn->Exec(sql); !r.ok()) {
        (void)conn->Exec("ROLLBACK");
        return absl::Status(r.status().code(),
                            absl::StrCat("migration to version ", m.version,
                                         " failed: ", r.status().message()));
      }
    }
    PgParams version_params;
    version_params.AddInt8(m.version);
    PgParams record_params;
    record_params.AddInt8(m.version);
    record_params.AddText(m.description);
    for (auto [sql, params] :
         {std::pair<const char*, const PgParams*>(
              "UPDATE cardvault_schema SET version = $1::int8::int, updated_at "
              "= now() WHERE id = 1",
              &version_params),
          std::pair<const char*, const PgParams*>(
              "INSERT INTO cardvault_migrations (version, description) VALUES "
              "($1::int8::int, $2)",
              &record_params)}) {
      if (absl::StatusOr<PgResult> r = conn->Exec(sql, *params); !r.ok()) {
        (void)conn->Exec("ROLLBACK");
        return r.status();
      }
    }
    if (absl::StatusOr<PgResult> r = conn->Exec("COMMIT"); !r.ok()) {
      return r.status();
    }
  }
  absl::StatusOr<PgResult> final_version =
      conn->Exec("SELECT version FROM cardvault_schema WHERE id = 1");
  if (!final_version.ok()) return final_version.status();
  absl::StatusOr<int64_t> to = final_version->Int8(0, 0);
  if (!to.ok()) return to.status();
  report.to_version = static_cast<int>(*to);
  return report;
}

}  // namespace cardvault::storage
