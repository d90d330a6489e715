// Real test fixtures: a SoftHSM2 token, a PKI and cardvaultd processes in a
// temporary directory, made by the same deploy/ scripts as the quickstart.
#ifndef CARDVAULT_TESTS_TESTING_TEST_ENV_H_
#define CARDVAULT_TESTS_TESTING_TEST_ENV_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tests/testing/postgres_server.h"

namespace cardvault::testing {

inline constexpr char kSoftHsmModule[] = "/usr/lib/softhsm/libsofthsm2.so";
inline constexpr char kTrustDomain[] = "cardvault.test";

// Runs `command` with /bin/sh; aborts the test binary if it fails, since no
// test can mean anything without its fixture.
void RunOrDie(const std::string& command);

// Reads a whole file ("" if missing).
std::string ReadFileOrEmpty(const std::string& path);

// Every regular file under `dir` (recursively) with its bytes.
std::vector<std::pair<std::string, std::string>> ReadTree(
    const std::string& dir);

// Files under `dir` (recursively) whose bytes contain `needle`.
std::vector<std::string> FilesContaining(const std::string& dir,
                                         absl::string_view needle);

// Whether this run tests direct-HSM mode (CARDVAULT_TEST_SEAL_IN_HSM=1):
// every TestEnv's server then seals records inside the HSM.
bool SealInHsm();

// Whether this run tests the PostgreSQL store with two nodes
// (CARDVAULT_TEST_POSTGRES=1): every TestEnv then runs its own PostgreSQL
// server and configures storage.postgres, and every ServerProcess is two
// cardvaultd nodes on that database.
bool OnPostgres();

struct TestEnvOptions {
  // OnPostgres() only: PostgreSQL logs every statement with its bound
  // parameters (log_statement = all), for suites that search its log for
  // card data.
  bool log_postgres_statements = false;
};

class TestEnv {
 public:
  // A new directory with a SoftHSM2 token (SOFTHSM2_CONF is set for this
  // process and its children) and a PKI for trust domain cardvault.test.
  // OnPostgres(): also a PostgreSQL server owned by the TestEnv (stopped by
  // its destructor), its connection string in postgres.conninfo (mode
  // 0600), the config's storage block `postgres { conninfo_file }`, and the
  // schema made by `cardvaultd --migrate`.
  static std::unique_ptr<TestEnv> Create();
  static std::unique_ptr<TestEnv> Create(const TestEnvOptions& options);
  ~TestEnv();

  const std::string& dir() const { return dir_; }
  std::string token_label() const { return "cardvault-test"; }
  std::string pin_file() const { return dir_ + "/softhsm/user.pin"; }
  std::string pki(absl::string_view file) const;
  // The RocksDB directory (unused OnPostgres()).
  std::string data_dir() const { return dir_ + "/data"; }
  std::string config_path() const { return dir_ + "/cardvaultd.textproto"; }
  // The PostgreSQL server OnPostgres(), else null.
  PostgresServer* postgres() const { return postgres_.get(); }
  // The metrics file of each node a ServerProcess starts: cardvault.prom,
  // and OnPostgres() the second node's cardvault-node2.prom.
  std::vector<std::string> metrics_files() const;
  // spiffe://cardvault.test/NAME
  static std::string Identity(absl::string_view name);

  // Issues NAME.crt/NAME.key from the same CA with `uri_san` ("-" for none).
  void IssueClient(absl::string_view name, absl::string_view uri_san) const;
  // Inserts `line` at the top of the config's `block {` (e.g. "tls").
  void AddToConfig(absl::string_view block, absl::string_view line) const;
  std::string policy_path() const { return dir_ + "/policy.textproto"; }
  // Appends `line` (e.g. a `bindings { ... }` block) to the policy file; a
  // running server picks it up at its next reload check.
  void AddToPolicy(absl::string_view line) const;
  // Lets the nodes of a PostgreSQL config call each other (cluster block):
  // pki/node.crt, bound to the NODE role as Identity("node").
  void JoinCluster() const;
  // Revokes pki/NAME.crt and writes the CA's CRL into crl/; returns crl/.
  std::string Revoke(absl::string_view name) const;
  // A complete PKI under another CA in `subdir`; returns its directory.
  std::string MakeForeignPki(absl::string_view subdir) const;

  // CKA_LABEL of every secret key (token object) in the test token, as
  // opensc's pkcs11-tool lists them.
  std::vector<std::string> SecretKeyLabels() const;

 private:
  explicit TestEnv(std::string dir) : dir_(std::move(dir)) {}
  void UsePostgres(const TestEnvOptions& options);
  const std::string dir_;
  std::unique_ptr<PostgresServer> postgres_;
};

// A cardvaultd child process. Output (stdout and stderr) is appended to
// `log_path`, so every start of a test's server lands in one file.
//
// OnPostgres() it is two nodes on the one database: the first on `config`
// (it creates the keys), the second started once the first is ready, on a
// copy of `config` (`<config>.node2`) that differs only in its metrics file
// (TestEnv::metrics_files()). address() then hands out the nodes' addresses
// in turn, so that successive clients of a test go to alternate nodes;
// Kill9() and Terminate() act on both (the server is entirely down after
// them). When `port` is given, the second node's port is the one it had
// when the first node last started on that port, so that both nodes keep
// their names (host:port, AuditEvent.node) across restarts.
class ServerProcess {
 public:
  // Starts cardvaultd with `config` on a free loopback port and waits for its
  // ready line (or its exit). `max_descriptors` (when not 0) is the soft and
  // hard RLIMIT_NOFILE it starts with.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const std::string& config, const std::string& log_path, int port = 0,
      uint64_t max_descriptors = 0,
      const std::string& listen_host = "127.0.0.1");
  ~ServerProcess();

  // The next node's address (always the first's with one node).
  const std::string& address() const;
  // The first node's port and pid.
  int port() const { return nodes_[0].port; }
  pid_t pid() const { return nodes_[0].pid; }
  // Every node (one, or two OnPostgres()).
  size_t node_count() const { return nodes_.size(); }
  const std::string& node_address(size_t node) const {
    return nodes_[node].address;
  }
  int node_port(size_t node) const { return nodes_[node].port; }
  // The pids of the nodes still running.
  std::vector<pid_t> pids() const;

  // SIGKILL and reap every node: a crash with no chance to flush anything.
  void Kill9();
  // SIGTERM to every node and wait for each; returns the exit status as
  // waitpid reports it: the first node's, or the first that is not a clean
  // exit 0 (-1 when no node was running).
  int Terminate();
  // The first node has been reaped by the caller (it exited by itself).
  void Forget() { nodes_[0].pid = -1; }

 private:
  struct Node {
    pid_t pid = -1;
    int port = 0;
    std::string address;
  };
  static absl::StatusOr<Node> StartNode(const std::string& config,
                                        const std::string& log_path, int port,
                                        uint64_t max_descriptors,
                                        const std::string& listen_host);
  static absl::StatusOr<Node> StartOnce(const std::string& config,
                                        const std::string& log_path, int port,
                                        uint64_t max_descriptors,
                                        const std::string& listen_host);
  explicit ServerProcess(std::vector<Node> nodes) : nodes_(std::move(nodes)) {}
  std::vector<Node> nodes_;
  mutable std::atomic<size_t> next_{0};
};

// A TCP port on 127.0.0.1 that was free a moment ago.
int PickUnusedPort();

}  // namespace cardvault::testing

#endif  // CARDVAULT_TESTS_TESTING_TEST_ENV_H_
