#include "tests/testing/postgres_server.h"

#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/testing/test_env.h"

namespace cardvault::testing {
namespace {

constexpr absl::Duration kStartTimeout = absl::Seconds(60);
constexpr absl::Duration kStopTimeout = absl::Seconds(60);
constexpr int kStartAttempts = 8;

std::string Bin(absl::string_view name) {
  return absl::StrCat(kPostgresBinDir, "/", name);
}

// The last `max` bytes of a log, for error messages.
std::string Tail(const std::string& text, size_t max = 4000) {
  return text.size() <= max ? text : text.substr(text.size() - max);
}

absl::StatusOr<std::string> RandomPassword() {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  unsigned char bytes[32];
  if (getrandom(bytes, sizeof(bytes), 0) != sizeof(bytes)) {
    return absl::InternalError("getrandom failed");
  }
  std::string password;
  // 62 symbols: the modulo bias is irrelevant for a test password.
  for (unsigned char b : bytes) password.push_back(kAlphabet[b % 62]);
  return password;
}

absl::Status WriteFile(const std::string& path, const std::string& content,
                       mode_t mode, uid_t uid, gid_t gid) {
  const int fd =
      open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("open ", path, ": ", std::strerror(errno)));
  }
  const bool written = write(fd, content.data(), content.size()) ==
                           static_cast<ssize_t>(content.size()) &&
                       fchown(fd, uid, gid) == 0 && fchmod(fd, mode) == 0;
  close(fd);
  if (!written) {
    return absl::InternalError(
        absl::StrCat("write ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// A child running argv[0] with stdout and stderr appended to `log_path`, as
// uid/gid when they differ from ours. Everything the child needs is built
// here: between fork and execve only async-signal-safe calls happen (the
// parent has threads, and may run under ASan).
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& args,
                            const std::string& log_path, const std::string& cwd,
                            uid_t uid, gid_t gid) {
  std::vector<char*> argv;
  for (const std::string& a : args)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  // A minimal environment: no PG* variables, no ASAN_OPTIONS, C messages
  // (the harness reads English log lines).
  const std::vector<std::string> env = {"PATH=/usr/bin:/bin", "LC_ALL=C",
                                        "LANG=C", "TZ=UTC",
                                        absl::StrCat("HOME=", cwd)};
  std::vector<char*> envp;
  for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const bool switch_user = uid != geteuid();
  const long max_fd = sysconf(_SC_OPEN_MAX) > 0 ? sysconf(_SC_OPEN_MAX) : 4096;

  const int log_fd =
      open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (log_fd < 0 || null_fd < 0) {
    if (log_fd >= 0) close(log_fd);
    if (null_fd >= 0) close(null_fd);
    return absl::InternalError(
        absl::StrCat("open ", log_path, ": ", std::strerror(errno)));
  }
  const pid_t pid = fork();
  if (pid == 0) {
    // Out of the test's process group: a terminal's ^C reaches the test,
    // whose destructors then stop the server in order.
    setpgid(0, 0);
    if (dup2(null_fd, STDIN_FILENO) < 0 || dup2(log_fd, STDOUT_FILENO) < 0 ||
        dup2(log_fd, STDERR_FILENO) < 0) {
      _exit(125);
    }
    // Descriptors the test holds (sockets, databases) must not live on in
    // the server, e.g. keeping a port bound.
    if (close_range(3, ~0U, 0) != 0) {
      for (long fd = 3; fd < max_fd; ++fd) close(static_cast<int>(fd));
    }
    if (switch_user &&
        (setgroups(1, &gid) != 0 || setgid(gid) != 0 || setuid(uid) != 0)) {
      _exit(126);
    }
    if (chdir(cwd.c_str()) != 0) _exit(126);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  const int fork_errno = errno;
  close(log_fd);
  close(null_fd);
  if (pid < 0) {
    return absl::InternalError(
        absl::StrCat("fork: ", std::strerror(fork_errno)));
  }
  return pid;
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status))
    return absl::StrCat("exit status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("signal ", WTERMSIG(status));
  return "unknown status";
}

// Fields of /proc/<pid>/stat after the command name (which may hold spaces
// and parentheses): [0] is the state, [1] the parent pid, [19] the start
// time. Empty if the process is gone.
std::vector<std::string> ProcStat(pid_t pid) {
  const std::string stat =
      ReadFileOrEmpty(absl::StrCat("/proc/", pid, "/stat"));
  const size_t end = stat.rfind(')');
  if (end == std::string::npos) return {};
  return absl::StrSplit(stat.substr(end + 1), ' ', absl::SkipEmpty());
}

// "<pid> <start time>": names this process even after its pid is reused.
std::string ProcessIdentity(pid_t pid) {
  const std::vector<std::string> fields = ProcStat(pid);
  return fields.size() > 19 ? absl::StrCat(pid, " ", fields[19]) : "";
}

// SIGKILL a postmaster and its children. PostgreSQL puts every child in its
// own session (setsid), so a process group signal does not reach them; the
// postmaster is stopped first so that it forks none while we look.
void KillServerTree(pid_t postmaster) {
  kill(postmaster, SIGSTOP);
  std::error_code error;
  for (const auto& entry :
       std::filesystem::directory_iterator("/proc", error)) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &pid)) continue;
    const std::vector<std::string> fields = ProcStat(pid);
    if (fields.size() > 1 && fields[1] == absl::StrCat(postmaster)) {
      kill(pid, SIGKILL);
    }
  }
  kill(postmaster, SIGKILL);
}

constexpr char kDirPrefix[] = "cardvault-pg-";
constexpr char kOwnerFile[] = "harness.owner";

// Servers whose test binary died without its destructor (a crash, a timeout's
// SIGKILL) would run forever: stop them and remove their directories. A
// directory counts only with our owner file naming a process that is gone.
void RemoveStaleServers() {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/tmp", error)) {
    const std::string name = entry.path().filename().string();
    if (!absl::StartsWith(name, kDirPrefix)) continue;
    const std::string dir = entry.path().string();
    const std::string owner =
        ReadFileOrEmpty(absl::StrCat(dir, "/", kOwnerFile));
    pid_t owner_pid = 0;
    if (owner.empty() ||
        !absl::SimpleAtoi(owner.substr(0, owner.find(' ')), &owner_pid) ||
        ProcessIdentity(owner_pid) == owner) {
      continue;
    }
    const std::string pid_file = ReadFileOrEmpty(dir + "/data/postmaster.pid");
    pid_t postmaster = 0;
    if (absl::SimpleAtoi(pid_file.substr(0, pid_file.find('\n')),
                         &postmaster) &&
        postmaster > 0 &&
        absl::StrContains(
            ReadFileOrEmpty(absl::StrCat("/proc/", postmaster, "/cmdline")),
            dir + "/data")) {
      KillServerTree(postmaster);
    }
    std::filesystem::remove_all(dir, error);
  }
}

// Single quotes for postgresql.conf.
std::string ConfQuote(absl::string_view s) {
  return absl::StrCat("'", absl::StrReplaceAll(s, {{"'", "''"}}), "'");
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresServer>> PostgresServer::Start(
    Options options) {
  for (const char* bin : {"initdb", "postgres"}) {
    if (access(Bin(bin).c_str(), X_OK) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(Bin(bin), " is missing: install postgresql-15"));
    }
  }
  uid_t uid = geteuid();
  gid_t gid = getegid();
  if (uid == 0) {
    // PostgreSQL refuses to run as root: run it as the system user that
    // postgresql-common creates.
    passwd entry{};
    passwd* found = nullptr;
    std::vector<char> buffer(16384);
    if (getpwnam_r("postgres", &entry, buffer.data(), buffer.size(), &found) !=
            0 ||
        found == nullptr) {
      return absl::FailedPreconditionError(
          "running as root, and PostgreSQL refuses to run as root, but there "
          "is no `postgres` system user to run it as (the postgresql-common "
          "package creates it: install postgresql-15)");
    }
    uid = found->pw_uid;
    gid = found->pw_gid;
  }
  RemoveStaleServers();
  // /tmp itself (not TMPDIR): the postgres user must be able to reach the
  // directory, and /tmp (1777) lets it.
  std::string dir_template = absl::StrCat("/tmp/", kDirPrefix, "XXXXXX");
  if (mkdtemp(dir_template.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  }
  const std::string dir = dir_template;
  const std::string run_dir = dir + "/run";
  if (chown(dir.c_str(), uid, gid) != 0 || mkdir(run_dir.c_str(), 0700) != 0 ||
      chown(run_dir.c_str(), uid, gid) != 0) {
    const std::string error = std::strerror(errno);
    std::filesystem::remove_all(dir);
    return absl::InternalError(absl::StrCat("set up ", dir, ": ", error));
  }
  absl::StatusOr<std::string> password = RandomPassword();
  if (!password.ok()) {
    std::filesystem::remove_all(dir);
    return password.status();
  }
  std::unique_ptr<PostgresServer> server(
      new PostgresServer(std::move(options), dir, uid, gid, *password));
  // libpq's passfile: ours, 0600 (libpq ignores a file others can read).
  // ':' and '\' would need escaping; the user name and password have none.
  absl::Status status =
      WriteFile(absl::StrCat(dir, "/", kOwnerFile), ProcessIdentity(getpid()),
                0600, geteuid(), getegid());
  if (status.ok()) {
    status = WriteFile(
        server->password_file(),
        absl::StrCat("*:*:*:", server->user(), ":", server->password(), "\n"),
        0600, geteuid(), getegid());
  }
  if (status.ok()) status = server->InitDb();
  if (status.ok()) status = server->WriteConfig();
  if (status.ok()) {
    server->port_ = PickUnusedPort();
    status = server->Start();
  }
  if (status.ok()) status = server->CreateDatabase();
  if (!status.ok()) return status;
  return server;
}

PostgresServer::~PostgresServer() {
  if (!Stop().ok()) Kill();
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

std::string PostgresServer::conninfo() const {
  return conninfo(options_.database);
}

std::string PostgresServer::conninfo(const std::string& database) const {
  return absl::StrCat("host=127.0.0.1 port=", port_, " dbname=", database,
                      " user=", options_.user, " passfile=", password_file());
}

absl::Status PostgresServer::InitDb() {
  // initdb reads the superuser's password from a file it can read.
  const std::string pwfile = dir_ + "/initdb.pw";
  if (absl::Status s = WriteFile(pwfile, password_ + "\n", 0600, uid_, gid_);
      !s.ok()) {
    return s;
  }
  const std::string log = dir_ + "/initdb.log";
  // --no-sync: a crash during initdb is not a case any test has; the server
  // itself runs with fsync on.
  absl::StatusOr<pid_t> pid =
      Spawn({Bin("initdb"), "-D", data_directory(), "-U", options_.user,
             "--auth=scram-sha-256", "--pwfile=" + pwfile, "--encoding=UTF8",
             "--locale=C", "--no-sync", "--no-instructions"},
            log, dir_, uid_, gid_);
  if (!pid.ok()) return pid.status();
  int status = 0;
  while (waitpid(*pid, &status, 0) < 0 && errno == EINTR) {
  }
  unlink(pwfile.c_str());
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("initdb failed (", DescribeExit(status), "):\n",
                     Tail(ReadFileOrEmpty(log))));
  }
  return absl::OkStatus();
}

absl::Status PostgresServer::WriteConfig() {
  // Appended after initdb's settings, so these win; the caller's lines come
  // last and win over ours. The port is a command-line flag (it may change).
  std::vector<std::string> lines = {
      "",
      "# cardvault test harness (tests/testing/postgres_server.cc)",
      "listen_addresses = '127.0.0.1'",
      "unix_socket_directories = " + ConfQuote(dir_ + "/run"),
      "fsync = on",
      "synchronous_commit = on",
      "full_page_writes = on",
      "logging_collector = off",
      "log_destination = 'stderr'",
      "log_line_prefix = '%m [%p] '",
      "max_connections = 100",
  };
  for (const std::string& line : options_.config_lines) lines.push_back(line);
  std::ofstream conf(data_directory() + "/postgresql.conf", std::ios::app);
  conf << absl::StrJoin(lines, "\n") << "\n";
  conf.close();
  if (!conf) return absl::InternalError("could not write postgresql.conf");
  return absl::OkStatus();
}

absl::Status PostgresServer::Start() {
  if (running()) return absl::FailedPreconditionError("already running");
  absl::Status status;
  for (int attempt = 0; attempt < kStartAttempts; ++attempt) {
    bool retry = false;
    status = StartOnce(&retry);
    if (status.ok() || !retry) return status;
  }
  return status;
}

absl::Status PostgresServer::StartOnce(bool* retry) {
  const size_t log_offset = ReadFileOrEmpty(log_file()).size();
  absl::StatusOr<pid_t> pid = Spawn(
      {Bin("postgres"), "-D", data_directory(), "-p", absl::StrCat(port_)},
      log_file(), dir_, uid_, gid_);
  if (!pid.ok()) return pid.status();
  pid_ = *pid;
  const std::string pid_file = data_directory() + "/postmaster.pid";
  const absl::Time deadline = absl::Now() + kStartTimeout;
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      const std::string log = ReadFileOrEmpty(log_file()).substr(log_offset);
      if (absl::StrContains(log, "Address already in use")) {
        // Another process took the port between our probe and the bind.
        port_ = PickUnusedPort();
        *retry = true;
      } else if (absl::StrContains(log, "is still in use")) {
        // Shared memory of a killed server whose last backend is still
        // exiting.
        absl::SleepFor(absl::Milliseconds(200));
        *retry = true;
      }
      return absl::FailedPreconditionError(
          absl::StrCat("postgres exited during start-up (",
                       DescribeExit(status), "):\n", Tail(log)));
    }
    // Line 1 is the postmaster's pid, line 8 its status ("ready" once it
    // accepts connections): what pg_ctl -w waits for.
    const std::vector<std::string> lines =
        absl::StrSplit(ReadFileOrEmpty(pid_file), '\n');
    if (lines.size() >= 8 && lines[0] == absl::StrCat(pid_) &&
        absl::StartsWith(lines[7], "ready")) {
      return absl::OkStatus();
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  Kill();
  return absl::DeadlineExceededError(absl::StrCat(
      "postgres not ready after ", absl::FormatDuration(kStartTimeout), ":\n",
      Tail(ReadFileOrEmpty(log_file()).substr(log_offset))));
}

absl::Status PostgresServer::Stop() {
  if (!running()) return absl::OkStatus();
  // What pg_ctl stop -m fast sends: roll back open transactions, then a
  // shutdown checkpoint.
  kill(pid_, SIGINT);
  const absl::Time deadline = absl::Now() + kStopTimeout;
  while (absl::Now() < deadline) {
    int status = 0;
    const pid_t reaped = waitpid(pid_, &status, WNOHANG);
    if (reaped == pid_ || (reaped < 0 && errno == ECHILD)) {
      pid_ = -1;
      return absl::OkStatus();
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  Kill();
  return absl::DeadlineExceededError("postgres did not stop within 60 s");
}

void PostgresServer::Kill() {
  if (!running()) return;
  KillServerTree(pid_);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

absl::Status PostgresServer::Restart() {
  if (absl::Status s = Stop(); !s.ok()) return s;
  return Start();
}

absl::Status PostgresServer::CreateDatabase() {
  if (options_.database == "postgres") return absl::OkStatus();
  PGconn* connection = PQconnectdb(conninfo("postgres").c_str());
  absl::Status status;
  if (PQstatus(connection) != CONNECTION_OK) {
    status = absl::FailedPreconditionError(absl::StrCat(
        "connect to create the database: ", PQerrorMessage(connection)));
  } else {
    // The caller's config may name a synchronous standby that never comes.
    PQclear(PQexec(connection, "SET synchronous_commit = local"));
    char* name = PQescapeIdentifier(connection, options_.database.data(),
                                    options_.database.size());
    PGresult* result =
        PQexec(connection, absl::StrCat("CREATE DATABASE ", name).c_str());
    if (PQresultStatus(result) != PGRES_COMMAND_OK) {
      status = absl::FailedPreconditionError(
          absl::StrCat("CREATE DATABASE: ", PQresultErrorMessage(result)));
    }
    PQclear(result);
    PQfreemem(name);
  }
  PQfinish(connection);
  return status;
}

}  // namespace cardvault::testing
