// The PostgreSQL schema of the vault (postgres_store.h documents it) and the
// migrations that bring a database to it: `cardvaultd --migrate` runs
// MigratePostgres; a serving vault never changes the schema and refuses a
// version it does not know.
//
// Thread safety: thread-safe (no state); concurrent migrations of one
// database are serialised by the lock on the version row.
#ifndef CARDVAULT_SERVER_STORAGE_POSTGRES_SCHEMA_H_
#define CARDVAULT_SERVER_STORAGE_POSTGRES_SCHEMA_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace cardvault::storage {

// One step from version `version - 1` to `version`.
struct Migration {
  int version;
  std::string description;
  std::vector<std::string> statements;
};

// Every migration, oldest first; the last one's version is
// kPostgresSchemaVersion.
const std::vector<Migration>& PostgresMigrations();

// What MigratePostgres did.
struct MigrationReport {
  int from_version = 0;
  int to_version = 0;
};

// Applies the migrations the database lacks, each in its own transaction
// with its version, so that a failed step leaves the previous version whole.
// FAILED_PRECONDITION when the database holds a newer version than this
// build knows.
absl::StatusOr<MigrationReport> MigratePostgres(absl::string_view conninfo);

}  // namespace cardvault::storage

#endif  // CARDVAULT_SERVER_STORAGE_POSTGRES_SCHEMA_H_
