// Proves, from inside, that the vault can still be reached as its clients
// reach it: every interval a new connection through the listener's accept
// loop (its private probe socket, see net/tcp_listener.h), a full
// mutual-TLS handshake with a certificate of the client CA, and a
// grpc.health.v1 Check. Any answer counts (the HSM's state is not the
// listener's). Readiness follows the probes; when they have failed for
// `exit_after`, `on_give_up` runs once: main then stops the vault as on
// SIGTERM (the audit trail closed) and exits non-zero, for systemd or
// Kubernetes to restart it.
//
// Thread safety: thread-safe; one probing thread.
#ifndef CARDVAULT_SERVER_SERVICE_LISTENER_WATCHDOG_H_
#define CARDVAULT_SERVER_SERVICE_LISTENER_WATCHDOG_H_

#include <grpcpp/security/credentials.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace cardvault::service {

class ListenerWatchdog {
 public:
  struct Options {
    // Required. gRPC target of the vault's own listener: its probe socket
    // ("unix:/tmp/cardvaultd-probe-.../probe.sock").
    std::string target;
    // Required. PEM files: the probe's client certificate and key, and the
    // CA the server certificate is checked against.
    std::string client_cert_file;
    std::string client_key_file;
    std::string server_ca_file;
    // Name the server certificate must hold. Default "localhost".
    std::string server_name = "localhost";
    // Between probes, and the deadline of one. Defaults 5 s and 3 s.
    absl::Duration interval = absl::Seconds(5);
    absl::Duration timeout = absl::Seconds(3);
    // Failing for this long gives up. Default 60 s.
    absl::Duration exit_after = absl::Seconds(60);
    std::function<absl::Time()> now = [] { return absl::Now(); };
  };

  // Reads the PEM files and starts probing. `on_change(ready)` runs when
  // readiness changes; `on_give_up(reason)` at most once.
  static absl::StatusOr<std::unique_ptr<ListenerWatchdog>> Start(
      Options options, std::function<void(bool)> on_change,
      std::function<void(absl::string_view)> on_give_up);

  ListenerWatchdog(const ListenerWatchdog&) = delete;
  ListenerWatchdog& operator=(const ListenerWatchdog&) = delete;
  ~ListenerWatchdog();

  bool ready() const { return ready_.load(); }
  uint64_t failures() const { return failures_.load(); }

 private:
  ListenerWatchdog(Options options,
                   std::shared_ptr<grpc::ChannelCredentials> credentials,
                   std::function<void(bool)> on_change,
                   std::function<void(absl::string_view)> on_give_up);
  absl::Status Probe();
  void Run();

  const Options options_;
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  const std::function<void(bool)> on_change_;
  const std::function<void(absl::string_view)> on_give_up_;
  std::atomic<bool> ready_{true};
  std::atomic<uint64_t> failures_{0};
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_LISTENER_WATCHDOG_H_
