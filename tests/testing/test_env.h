// Real test fixtures: a SoftHSM2 token, a PKI and cardvaultd processes in a
// temporary directory, made by the same deploy/ scripts as the quickstart.
#ifndef CARDVAULT_TESTS_TESTING_TEST_ENV_H_
#define CARDVAULT_TESTS_TESTING_TEST_ENV_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

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

class TestEnv {
 public:
  // A new directory with a SoftHSM2 token (SOFTHSM2_CONF is set for this
  // process and its children) and a PKI for trust domain cardvault.test.
  static std::unique_ptr<TestEnv> Create();
  ~TestEnv();

  const std::string& dir() const { return dir_; }
  std::string token_label() const { return "cardvault-test"; }
  std::string pin_file() const { return dir_ + "/softhsm/user.pin"; }
  std::string pki(absl::string_view file) const;
  std::string data_dir() const { return dir_ + "/data"; }
  std::string config_path() const { return dir_ + "/cardvaultd.textproto"; }
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
  // Revokes pki/NAME.crt and writes the CA's CRL into crl/; returns crl/.
  std::string Revoke(absl::string_view name) const;
  // A complete PKI under another CA in `subdir`; returns its directory.
  std::string MakeForeignPki(absl::string_view subdir) const;

  // CKA_LABEL of every secret key (token object) in the test token, as
  // opensc's pkcs11-tool lists them.
  std::vector<std::string> SecretKeyLabels() const;

 private:
  explicit TestEnv(std::string dir) : dir_(std::move(dir)) {}
  const std::string dir_;
};

// A cardvaultd child process. Output (stdout and stderr) is appended to
// `log_path`, so every start of a test's server lands in one file.
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

  const std::string& address() const { return address_; }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }

  // SIGKILL and reap: a crash with no chance to flush anything.
  void Kill9();
  // SIGTERM and wait; returns the exit status as waitpid reports it.
  int Terminate();
  // The process has been reaped by the caller (it exited by itself).
  void Forget() { pid_ = -1; }

 private:
  static absl::StatusOr<std::unique_ptr<ServerProcess>> StartOnce(
      const std::string& config, const std::string& log_path, int port,
      uint64_t max_descriptors, const std::string& listen_host);
  ServerProcess(pid_t pid, int port)
      : pid_(pid), port_(port), address_("127.0.0.1:" + std::to_string(port)) {}
  pid_t pid_;
  const int port_;
  const std::string address_;
};

// A TCP port on 127.0.0.1 that was free a moment ago.
int PickUnusedPort();

}  // namespace cardvault::testing

#endif  // CARDVAULT_TESTS_TESTING_TEST_ENV_H_
