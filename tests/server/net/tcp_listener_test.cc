#include "server/net/tcp_listener.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace cardvault::net {
namespace {

using ::cardvault::testing::IsOk;
using ::cardvault::testing::StatusIs;

sockaddr_storage V6(const char* text, int port) {
  sockaddr_storage s{};
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&s);
  in6->sin6_family = AF_INET6;
  in6->sin6_port = htons(port);
  inet_pton(AF_INET6, text, &in6->sin6_addr);
  return s;
}

sockaddr_storage V4(const char* text, int port) {
  sockaddr_storage s{};
  auto* in = reinterpret_cast<sockaddr_in*>(&s);
  in->sin_family = AF_INET;
  in->sin_port = htons(port);
  inet_pton(AF_INET, text, &in->sin_addr);
  return s;
}

TEST(TcpListenerTest, RefusesAddressesThatAreNotHostAndPort) {
  for (const char* bad :
       {"::1:0", "127.0.0.1:+0", "127.0.0.1: 0", "127.0.0.1:", "127.0.0.1",
        "127.0.0.1:70000", "127.0.0.1:-1", "[::1]:0x10"}) {
    EXPECT_THAT(TcpListener::Create({.address = bad}).status(),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << bad;
  }
  for (const char* good : {"127.0.0.1:0", "localhost:0", "0.0.0.0:0"}) {
    auto listener = TcpListener::Create({.address = good});
    EXPECT_THAT(listener.status(), IsOk()) << good;
    if (listener.ok()) EXPECT_GT((*listener)->port(), 0) << good;
  }
  // IPv6 where the machine has it (CI containers may not).
  const int probe = socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_storage loopback = V6("::1", 0);
  const bool has_ipv6 =
      probe >= 0 && bind(probe, reinterpret_cast<sockaddr*>(&loopback),
                         sizeof(sockaddr_in6)) == 0;
  if (probe >= 0) close(probe);
  if (has_ipv6) {
    EXPECT_THAT(TcpListener::Create({.address = "[::1]:0"}).status(), IsOk());
  }
}

TEST(TcpListenerTest, SourcesAreAddressesOrIpv6Slash64s) {
  EXPECT_EQ(SourceAddress(V4("10.1.2.3", 5)), "10.1.2.3");
  EXPECT_EQ(SourceAddress(V6("::ffff:10.1.2.3", 5)), "10.1.2.3");
  EXPECT_EQ(SourceAddress(V6("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 5)),
            "2001:db8:1:2::/64");
  EXPECT_EQ(SourceAddress(V6("2001:db8:1:2::1", 5)),
            SourceAddress(V6("2001:db8:1:2:ffff::9", 6)));
}

TEST(TcpListenerTest, PeerNamesAreGrpcs) {
  EXPECT_EQ(GrpcPeerName(V4("10.1.2.3", 443)), "ipv4:10.1.2.3:443");
  EXPECT_EQ(GrpcPeerName(V6("::ffff:10.1.2.3", 443)), "ipv4:10.1.2.3:443");
  EXPECT_EQ(GrpcPeerName(V6("2001:db8::1", 443)), "ipv6:[2001:db8::1]:443");
}

TEST(TcpListenerTest, ProbeDirectoriesOfDeadProcessesAreRemoved) {
  // A pid that is not running: a child reaped at once.
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  ASSERT_GT(dead, 0);
  waitpid(dead, nullptr, 0);
  const std::string stale =
      absl::StrCat("/tmp/cardvaultd-probe-", dead, "-test00");
  ASSERT_EQ(mkdir(stale.c_str(), 0700), 0);
  const std::string mine =
      absl::StrCat("/tmp/cardvaultd-probe-", getpid(), "-test00");
  ASSERT_EQ(mkdir(mine.c_str(), 0700), 0);
  auto made = MakeProbeDirectory();
  ASSERT_THAT(made.status(), IsOk());
  struct stat st {};
  EXPECT_NE(stat(stale.c_str(), &st), 0) << "stale directory left";
  EXPECT_EQ(stat(mine.c_str(), &st), 0) << "a live process's directory";
  ASSERT_EQ(stat(made->c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  rmdir(mine.c_str());
  rmdir(made->c_str());
}

TEST(TcpListenerTest, ProbeSocketIsTheOwnersOnly) {
  std::string dir = "/tmp/cardvault-listener-test-XXXXXX";
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  const std::string path = dir + "/probe.sock";
  {
    auto listener = TcpListener::Create(
        {.address = "127.0.0.1:0", .probe_socket_path = path});
    ASSERT_THAT(listener.status(), IsOk());
    struct stat st {};
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0600u);
  }
  struct stat gone {};
  EXPECT_NE(stat(path.c_str(), &gone), 0) << "left behind";
  rmdir(dir.c_str());
}

}  // namespace
}  // namespace cardvault::net
