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
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
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

std::unique_ptr<TestEnv> TestEnv::Create() {
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
  return env;
}

TestEnv::~TestEnv() {
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

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const std::string& config, const std::string& log_path, int port,
    uint64_t max_descriptors, const std::string& listen_host) {
  // A port picked here can be taken by another test's process before the
  // server binds it: then another one is picked.
  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        StartOnce(config, log_path, port == 0 ? PickUnusedPort() : port,
                  max_descriptors, listen_host);
    if (port != 0 || attempt == 3 || server.ok() ||
        !absl::StrContains(server.status().message(),
                           "Address already in use")) {
      return server;
    }
  }
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::StartOnce(
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
    if (max_descriptors != 0) {
      const rlimit limit{max_descriptors, max_descriptors};
      if (setrlimit(RLIMIT_NOFILE, &limit) != 0) _exit(126);
    }
    execl(CARDVAULTD_PATH, CARDVAULTD_PATH, config_flag.c_str(), listen.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  std::unique_ptr<ServerProcess> server(new ServerProcess(pid, port));
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    const std::string log = ReadFileOrEmpty(log_path).substr(log_offset);
    if (absl::StrContains(log, "cardvaultd ready")) return server;
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      server->pid_ = -1;
      return absl::FailedPreconditionError(absl::StrCat(
          "cardvaultd exited during start-up with exit status ",
          WIFEXITED(status) ? WEXITSTATUS(status) : -1, ":\n", log));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError("cardvaultd did not become ready");
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) Kill9();
}

void ServerProcess::Kill9() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

int ServerProcess::Terminate() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return status;
}

}  // namespace cardvault::testing
