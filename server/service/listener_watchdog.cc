#include "server/service/listener_watchdog.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/health_check.h"
#include "server/config/text_proto.h"
#include "server/util/log.h"

namespace cardvault::service {

absl::StatusOr<std::unique_ptr<ListenerWatchdog>> ListenerWatchdog::Start(
    Options options, std::function<void(bool)> on_change,
    std::function<void(absl::string_view)> on_give_up) {
  grpc::SslCredentialsOptions tls;
  for (const auto& [path, pem, what] :
       {std::tuple{options.client_cert_file, &tls.pem_cert_chain,
                   "watchdog client certificate"},
        std::tuple{options.client_key_file, &tls.pem_private_key,
                   "watchdog client key"},
        std::tuple{options.server_ca_file, &tls.pem_root_certs,
                   "watchdog server CA"}}) {
    absl::StatusOr<std::string> text = config::ReadTextFile(path, what);
    if (!text.ok()) return text.status();
    *pem = *std::move(text);
  }
  auto credentials = grpc::SslCredentials(tls);
  std::unique_ptr<ListenerWatchdog> watchdog(
      new ListenerWatchdog(std::move(options), std::move(credentials),
                           std::move(on_change), std::move(on_give_up)));
  watchdog->thread_ = std::thread([w = watchdog.get()] { w->Run(); });
  return watchdog;
}

ListenerWatchdog::ListenerWatchdog(
    Options options, std::shared_ptr<grpc::ChannelCredentials> credentials,
    std::function<void(bool)> on_change,
    std::function<void(absl::string_view)> on_give_up)
    : options_(std::move(options)),
      credentials_(std::move(credentials)),
      on_change_(std::move(on_change)),
      on_give_up_(std::move(on_give_up)) {}

ListenerWatchdog::~ListenerWatchdog() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

absl::Status ListenerWatchdog::Probe() {
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride(options_.server_name);
  // A connection of its own every time: accept and handshake are what is
  // probed, not a connection that happens to be open.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  auto channel = grpc::CreateCustomChannel(options_.target, credentials_, args);
  absl::StatusOr<client::ServingStatus> answer =
      client::CheckHealth(channel, "", options_.timeout);
  return answer.status();
}

void ListenerWatchdog::Run() {
  std::optional<absl::Time> failing_since;
  do {
    const absl::Status status = Probe();
    const absl::Time now = options_.now();
    if (status.ok()) {
      failing_since.reset();
    } else {
      ++failures_;
      if (!failing_since.has_value()) failing_since = now;
    }
    if (status.ok() != ready_.exchange(status.ok())) {
      if (status.ok()) {
        util::LogInfo("listener watchdog: the vault's port answers again");
      } else {
        util::LogError(absl::StrCat(
            "ALERT listener watchdog: a mutual-TLS health call to the "
            "vault's own port failed (",
            status.ToString(), "); not ready"));
      }
      on_change_(status.ok());
    }
    if (failing_since.has_value() &&
        now - *failing_since >= options_.exit_after) {
      on_give_up_(absl::StrCat(
          "listener watchdog: no mutual-TLS health call to the vault's own "
          "port succeeded for ",
          absl::FormatDuration(now - *failing_since)));
      return;
    }
  } while (!stop_.WaitForNotificationWithTimeout(options_.interval));
}

}  // namespace cardvault::service
