// A throw-away PostgreSQL 15 server for tests: initdb into a new directory
// under /tmp, a postmaster on 127.0.0.1 at a free port, one database, SCRAM
// password authentication. The destructor stops it and removes everything.
//
// Layout of dir() (mode 0700; owned by the `postgres` system user when the
// test runs as root, since PostgreSQL refuses to run as root):
//   data/           the data directory (data_directory()); fsync on.
//   run/            unix_socket_directories (loopback TCP is what tests use).
//   postgres.log    the server's stderr (log_file(); logging_collector off),
//                   appended across restarts: grep it for card data.
//   initdb.log      initdb's output.
//   pgpass          password_file(): "*:*:*:<user>:<password>", mode 0600,
//                   owned by the test's user, for libpq's passfile=.
//   harness.owner   "<pid> <start time>" of the test process. Start() first
//                   stops the servers and removes the directories of test
//                   processes that are gone (crashed, killed by a timeout).
// The superuser is Options::user; its password is 32 random alphanumerics,
// never in conninfo().
//
// Processes are started with fork/execve (no shell, so no quoting) with a
// minimal environment, every inherited descriptor but 0-2 closed, and (as
// root) the postgres user's uid and gid. The postmaster is our child (no
// pg_ctl daemonizing), so Start() knows its pid and reaps it. Kill() SIGKILLs
// the postmaster and every backend at once (PostgreSQL gives each child its
// own session, so a process-group signal would miss them): like a machine
// losing power but keeping the page cache. Stop() is what `pg_ctl stop -m
// fast` does: SIGINT to the postmaster and a wait for it (SIGKILL after
// 60 s).
//
// Several test binaries may each run servers at once (ctest -j): each has
// its own directory (mkdtemp) and port (bound to port 0 by the kernel's
// choice; a start that loses the port to another process retries with a new
// one).
//
// Thread safety: none; one thread drives a server. The server outlives the
// thread that started it.
#ifndef CARDVAULT_TESTS_TESTING_POSTGRES_SERVER_H_
#define CARDVAULT_TESTS_TESTING_POSTGRES_SERVER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"

namespace cardvault::testing {

inline constexpr char kPostgresBinDir[] = "/usr/lib/postgresql/15/bin";

class PostgresServer {
 public:
  struct Options {
    // Appended to postgresql.conf after ours (a later line wins), e.g.
    // "log_statement = all".
    std::vector<std::string> config_lines;
    std::string database = "cardvault";
    std::string user = "cardvault";
  };

  // initdb, start, wait until it accepts connections, create the database.
  // FAILED_PRECONDITION (with the reason: no postgres user, binaries
  // missing, initdb's or the server's log) when it cannot.
  static absl::StatusOr<std::unique_ptr<PostgresServer>> Start(Options options);
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  // Starts again on the same data (and port, unless it was taken) after
  // Stop() or Kill(); after Kill() the server runs crash recovery.
  absl::Status Start();
  // Fast shutdown (pg_ctl stop -m fast). OK if not running.
  absl::Status Stop();
  // SIGKILL to the postmaster and its backends, reaped before returning.
  void Kill();
  absl::Status Restart();

  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  const std::string& dir() const { return dir_; }
  std::string data_directory() const { return dir_ + "/data"; }
  std::string log_file() const { return dir_ + "/postgres.log"; }
  std::string password_file() const { return dir_ + "/pgpass"; }
  const std::string& password() const { return password_; }
  const std::string& database() const { return options_.database; }
  const std::string& user() const { return options_.user; }
  // "host=127.0.0.1 port=N dbname=D user=U passfile=P" (no password).
  std::string conninfo() const;
  // The same for another database (e.g. "postgres").
  std::string conninfo(const std::string& database) const;

 private:
  PostgresServer(Options options, std::string dir, uid_t uid, gid_t gid,
                 std::string password)
      : options_(std::move(options)),
        dir_(std::move(dir)),
        uid_(uid),
        gid_(gid),
        password_(std::move(password)) {}
  absl::Status InitDb();
  absl::Status WriteConfig();
  // One attempt: spawn the postmaster and wait until it is ready. `retry`
  // is set when it lost its port.
  absl::Status StartOnce(bool* retry);
  absl::Status CreateDatabase();

  const Options options_;
  const std::string dir_;
  // The user the server runs as (the postgres user as root, else ours).
  const uid_t uid_;
  const gid_t gid_;
  const std::string password_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// One PostgreSQL server for a whole test binary, started on first use and
// stopped when the binary's tests end. Register it once per binary:
//   ::testing::AddGlobalTestEnvironment(new SharedPostgresServer);
class SharedPostgresServer : public ::testing::Environment {
 public:
  // The server, or null if it could not start (the failure is reported).
  static PostgresServer* server() {
    if (server_ == nullptr && !tried_) {
      tried_ = true;
      absl::StatusOr<std::unique_ptr<PostgresServer>> s =
          PostgresServer::Start({});
      EXPECT_TRUE(s.ok()) << s.status();
      if (s.ok()) server_ = std::move(*s);
    }
    return server_.get();
  }
  void TearDown() override { server_.reset(); }

 private:
  static inline std::unique_ptr<PostgresServer> server_;
  static inline bool tried_ = false;
};

}  // namespace cardvault::testing

#endif  // CARDVAULT_TESTS_TESTING_POSTGRES_SERVER_H_
