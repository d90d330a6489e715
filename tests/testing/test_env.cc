#include "tests/testing/test_env.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace cardvault::testing {

void RunOrDie(const std::string& command) {
  const int rc = std::system(command.c_str());
  if (rc != 0) {
    std::cerr << "fixture command failed (" << rc << "): " << command << "\n";
    std::abort();
  }
}

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::vector<std::pair<std::string, std::string>> ReadTree(
    const std::string& dir) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) {
      out.emplace_back(entry.path(), ReadFileOrEmpty(entry.path()));
    }
  }
  return out;
}

std::vector<std::string> FilesContaining(const std::string& dir,
                                         absl::string_view needle) {
  std::vector<std::string> out;
  for (const auto& [path, content] : ReadTree(dir)) {
    if (absl::StrContains(content, needle)) out.push_back(path);
  }
  return out;
}

bool SealInHsm() {
  const char* v = std::getenv("CARDVAULT_TEST_SEAL_IN_HSM");
  return v != nullptr && std::string(v) == "1";
}

bool OnPostgres() {
  const char* v = std::getenv("CARDVAULT_TEST_POSTGRES");
  return v != nullptr && std::string(v) == "1";
}

namespace {

// The metrics file of the second node: `file` with "-node2" before its
// extension.
std::string SecondNodeMetricsFile(absl::string_view file) {
  const size_t slash = file.rfind('/');
  const size_t dot = file.rfind('.');
  if (dot == absl::string_view::npos ||
      (slash != absl::string_view::npos && dot < slash)) {
    return absl::StrCat(file, "-node2");
  }
  return absl::StrCat(file.substr(0, dot), "-node2", file.substr(dot));
}

// `config` with its metrics file (if any) replaced by the second node's.
std::string SecondNodeConfig(std::string config) {
  const size_t block = config.find("metrics {");
  if (block == std::string::npos) return config;
  const std::string key = "file: \"";
  const size_t at = config.find(key, block);
  const size_t end = config.find('"', at + key.size());
  if (at == std::string::npos || end == std::string::npos) std::abort();
  const size_t start = at + key.size();
  config.replace(start, end - start,
                 SecondNodeMetricsFile(config.substr(start, end - start)));
  return config;
}

}  // namespace

std::unique_ptr<TestEnv> TestEnv::Create() { return Create(TestEnvOptions()); }

std::unique_ptr<TestEnv> TestEnv::Create(const TestEnvOptions& options) {
  std::string tmpl =
      (std::filesystem::temp_directory_path() / "cardvault-test-XXXXXX")
          .string();
  if (mkdtemp(tmpl.data()) == nullptr) std::abort();
  std::unique_ptr<TestEnv> env(new TestEnv(tmpl));
  const std::string deploy = CARDVAULT_SOURCE_DIR "/deploy";
  RunOrDie(absl::StrCat(deploy, "/init-softhsm.sh ", tmpl, "/softhsm ",
                        env->token_label(), " >/dev/null"));
  setenv("SOFTHSM2_CONF", (tmpl + "/softhsm/softhsm2.conf").c_str(), 1);
  RunOrDie(absl::StrCat(deploy, "/make-pki.sh ", tmpl, "/pki ", tmpl, "/ca ",
                        kTrustDomain, " >/dev/null"));
  // Backups are off unless a test turns them on (BackupConfig).
  RunOrDie(absl::StrCat("WRITE_CONFIG_BACKUPS=0 ", deploy, "/write-config.sh ",
                        tmpl, " ", env->token_label(), " 127.0.0.1:1 ",
                        env->config_path(), " ", kTrustDomain, " >/dev/null"));
  if (SealInHsm()) env->AddToConfig("hsm", "seal_in_hsm: true");
  if (OnPostgres()) env->UsePostgres(options);
  return env;
}

void TestEnv::UsePostgres(const TestEnvOptions& options) {
  PostgresServer::Options pg_options;
  if (options.log_postgres_statements) {
    pg_options.config_lines = {"log_statement = all",
                               "log_min_duration_statement = 0"};
  }
  absl::StatusOr<std::unique_ptr<PostgresServer>> pg =
      PostgresServer::Start(std::move(pg_options));
  if (!pg.ok()) {
    std::cerr << "PostgreSQL did not start: " << pg.status() << "\n";
    std::abort();
  }
  postgres_ = *std::move(pg);
  // The connection string in its own private file, not in the config.
  const std::string conninfo_file = dir_ + "/postgres.conninfo";
  const int fd = open(conninfo_file.c_str(),
                      O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  const std::string line = postgres_->conninfo() + "\n";
  if (fd < 0 || write(fd, line.data(), line.size()) !=
                    static_cast<ssize_t>(line.size())) {
    std::abort();
  }
  close(fd);
  std::string config = ReadFileOrEmpty(config_path());
  const std::string rocksdb =
      absl::StrCat("rocksdb { data_dir: \"", data_dir(), "\" }");
  if (config.find(rocksdb) == std::string::npos) std::abort();
  config = absl::StrReplaceAll(
      config, {{rocksdb, absl::StrCat("postgres { conninfo_file: \"",
                                      conninfo_file, "\" }")}});
  std::ofstream(config_path(), std::ios::trunc) << config;
  JoinCluster();
  RunOrDie(absl::StrCat(CARDVAULTD_PATH, " --config ", config_path(),
                        " --migrate >>", dir_, "/migrate.log 2>&1"));
}

void TestEnv::JoinCluster() const {
  IssueClient("node", Identity("node"));
  std::ofstream(config_path(), std::ios::app)
      << "cluster {\n  client_cert_file: \"" << pki("node.crt")
      << "\"\n  client_key_file: \"" << pki("node.key") << "\"\n}\n";
  AddToPolicy(absl::StrCat("bindings { identity: \"", Identity("node"),
                           "\" roles: NODE }"));
}

std::vector<std::string> TestEnv::metrics_files() const {
  std::vector<std::string> files = {dir_ + "/cardvault.prom"};
  if (OnPostgres()) files.push_back(SecondNodeMetricsFile(files[0]));
  return files;
}

TestEnv::~TestEnv() {
  // The database first: its directory is its own, not under dir_.
  postgres_.reset();
  if (std::getenv("CARDVAULT_KEEP_TEST_DIRS") == nullptr) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::string TestEnv::pki(absl::string_view file) const {
  return absl::StrCat(dir_, "/pki/", file);
}

std::string TestEnv::Identity(absl::string_view name) {
  return absl::StrCat("spiffe://", kTrustDomain, "/", name);
}

void TestEnv::IssueClient(absl::string_view name,
                          absl::string_view uri_san) const {
  RunOrDie(absl::StrCat(CARDVAULT_SOURCE_DIR "/deploy/make-pki.sh --client ",
                        name, " '", uri_san, "' ", dir_, "/pki ", dir_,
                        "/ca >/dev/null"));
}

std::vector<std::string> TestEnv::SecretKeyLabels() const {
  const std::string out = dir_ + "/pkcs11-tool.out";
  RunOrDie(
      absl::StrCat("pkcs11-tool --module ", kSoftHsmModule, " --token-label ",
                   token_label(), " --login --pin \"$(cat ", pin_file(),
                   ")\" --list-objects --type secrkey >", out, " 2>/dev/null"));
  std::vector<std::string> labels;
  for (absl::string_view line : absl::StrSplit(ReadFileOrEmpty(out), '\n')) {
    line = absl::StripLeadingAsciiWhitespace(line);
    if (absl::ConsumePrefix(&line, "label:")) {
      labels.emplace_back(absl::StripAsciiWhitespace(line));
    }
  }
  return labels;
}

void TestEnv::AddToConfig(absl::string_view block,
                          absl::string_view line) const {
  std::string config = ReadFileOrEmpty(config_path());
  const std::string opening = absl::StrCat(block, " {");
  const size_t at = config.find(opening);
  if (at == std::string::npos) std::abort();
  config.insert(at + opening.size(), absl::StrCat("\n  ", line));
  std::ofstream(config_path(), std::ios::trunc) << config;
}

void TestEnv::AddToPolicy(absl::string_view line) const {
  const std::string policy = ReadFileOrEmpty(policy_path());
  // Write-then-rename, as an operator's deploy tool would, so that a reload
  // never sees half a file.
  const std::string tmp = policy_path() + ".tmp";
  std::ofstream(tmp, std::ios::trunc) << policy << line << "\n";
  std::filesystem::rename(tmp, policy_path());
}

std::string TestEnv::Revoke(absl::string_view name) const {
  const std::string crl = dir_ + "/crl";
  RunOrDie(absl::StrCat(CARDVAULT_SOURCE_DIR "/deploy/revoke-cert.sh ",
                        pki(absl::StrCat(name, ".crt")), " ", dir_, "/ca ", crl,
                        " >/dev/null"));
  return crl;
}

std::string TestEnv::MakeForeignPki(absl::string_view subdir) const {
  const std::string root = absl::StrCat(dir_, "/", subdir);
  RunOrDie(absl::StrCat(CARDVAULT_SOURCE_DIR "/deploy/make-pki.sh ", root,
                        "/pki ", root, "/ca ", kTrustDomain, " >/dev/null"));
  return root + "/pki";
}

int PickUnusedPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::abort();
  }
  close(fd);
  return ntohs(addr.sin_port);
}

absl::StatusOr<ServerProcess::Node> ServerProcess::StartNode(
    const std::string& config, const std::string& log_path, int port,
    uint64_t max_descriptors, const std::string& listen_host) {
  // A port picked here can be taken by another test's process before the
  // server binds it: then another one is picked.
  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<Node> node =
        StartOnce(config, log_path, port == 0 ? PickUnusedPort() : port,
                  max_descriptors, listen_host);
    if (port != 0 || attempt == 3 || node.ok() ||
        !absl::StrContains(node.status().message(), "Address already in use")) {
      return node;
    }
  }
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const std::string& config, const std::string& log_path, int port,
    uint64_t max_descriptors, const std::string& listen_host) {
  absl::StatusOr<Node> first =
      StartNode(config, log_path, port, max_descriptors, listen_host);
  if (!first.ok()) return first.status();
  std::unique_ptr<ServerProcess> server(new ServerProcess({*std::move(first)}));
  if (!OnPostgres()) return server;

  // The second node, once the first has made the keys: the port it had
  // beside the first node's port before, if any.
  static std::mutex mu;
  static auto* second_ports = new std::map<int, int>();
  int second_port = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = second_ports->find(server->port());
    if (it != second_ports->end()) second_port = it->second;
  }
  const std::string second_config = config + ".node2";
  std::ofstream(second_config, std::ios::trunc)
      << SecondNodeConfig(ReadFileOrEmpty(config));
  std::error_code ec;
  std::filesystem::permissions(
      second_config, std::filesystem::status(config).permissions(), ec);
  absl::StatusOr<Node> second = StartNode(second_config, log_path, second_port,
                                          max_descriptors, listen_host);
  if (!second.ok()) {
    return absl::Status(
        second.status().code(),
        absl::StrCat("second node: ", second.status().message()));
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    (*second_ports)[server->port()] = second->port;
  }
  server->nodes_.push_back(*std::move(second));
  return server;
}

absl::StatusOr<ServerProcess::Node> ServerProcess::StartOnce(
    const std::string& config, const std::string& log_path, int port,
    uint64_t max_descriptors, const std::string& listen_host) {
  const std::string listen =
      absl::StrCat("--listen_address=", listen_host, ":", port);
  const std::string config_flag = "--config=" + config;
  const size_t log_offset = ReadFileOrEmpty(log_path).size();
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    // Nothing else of the test's: a server outliving an aborted test must
    // not hold its descriptors (such as a lock file `flock` runs it under).
    close_range(3, ~0U, 0);
    if (max_descriptors != 0) {
      const rlimit limit{max_descriptors, max_descriptors};
      if (setrlimit(RLIMIT_NOFILE, &limit) != 0) _exit(126);
    }
    execl(CARDVAULTD_PATH, CARDVAULTD_PATH, config_flag.c_str(), listen.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  const Node node{
      .pid = pid, .port = port, .address = absl::StrCat("127.0.0.1:", port)};
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    const std::string log = ReadFileOrEmpty(log_path).substr(log_offset);
    if (absl::StrContains(log, "cardvaultd ready")) return node;
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cardvaultd exited during start-up with exit status ",
          WIFEXITED(status) ? WEXITSTATUS(status) : -1, ":\n", log));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return absl::DeadlineExceededError("cardvaultd did not become ready");
}

ServerProcess::~ServerProcess() { Kill9(); }

const std::string& ServerProcess::address() const {
  return nodes_[next_.fetch_add(1) % nodes_.size()].address;
}

std::vector<pid_t> ServerProcess::pids() const {
  std::vector<pid_t> out;
  for (const Node& node : nodes_) {
    if (node.pid > 0) out.push_back(node.pid);
  }
  return out;
}

void ServerProcess::Kill9() {
  for (Node& node : nodes_) {
    if (node.pid <= 0) continue;
    kill(node.pid, SIGKILL);
    waitpid(node.pid, nullptr, 0);
    node.pid = -1;
  }
}

int ServerProcess::Terminate() {
  for (const Node& node : nodes_) {
    if (node.pid > 0) kill(node.pid, SIGTERM);
  }
  int result = -1;
  for (Node& node : nodes_) {
    if (node.pid <= 0) continue;
    int status = 0;
    waitpid(node.pid, &status, 0);
    node.pid = -1;
    const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (result == -1 || (!clean && result == 0)) result = status;
  }
  return result;
}

}  // namespace cardvault::testing
