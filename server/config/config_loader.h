// Reads and checks the cardvaultd configuration (text-format ServerConfig).
#ifndef CARDVAULT_SERVER_CONFIG_CONFIG_LOADER_H_
#define CARDVAULT_SERVER_CONFIG_CONFIG_LOADER_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cardvault/config/v1/config.pb.h"
#include "server/crypto/secret_bytes.h"

namespace cardvault::config {

using ServerConfig = ::cardvault::config::v1::ServerConfig;

// Parses `text` (named `source` in errors), fills documented defaults and
// validates every value. INVALID_ARGUMENT names the file, line and column for
// syntax errors and unknown keys, and the field path for bad values.
absl::StatusOr<ServerConfig> ParseConfig(absl::string_view text,
                                         absl::string_view source);

// `path` without "." and ".." steps, doubled slashes or a trailing slash
// ("/srv/data/" and "/srv/./data" are "/srv/data"): the data directory's
// siblings ("<dir>.staging", "<dir>.restoring", "<dir>.before-restore-...")
// are named by appending to it, and must land beside it, not inside it.
std::string NormalizeDirectory(absl::string_view path);

// INVALID_ARGUMENT when backups would live inside the data directory (or
// hold it): a disk loss must not take both.
absl::Status CheckBackupDirectory(const ServerConfig& config);

// Reads `path` and calls ParseConfig.
absl::StatusOr<ServerConfig> LoadConfigFile(const std::string& path);

// FAILED_PRECONDITION, naming `what`, the path and its mode or owner, unless
// `path` is owned by the user the process runs as and writable by nobody
// else; with `secret`, also readable by nobody else (mode 0600 or tighter).
absl::Status CheckFileIsPrivate(const std::string& path, absl::string_view what,
                                bool secret);

// Reads the HSM user PIN from the file or environment variable the config
// names. The PIN is never taken from argv or the config itself.
absl::StatusOr<crypto::SecretBytes> ReadHsmPin(
    const ::cardvault::config::v1::HsmConfig& hsm);

}  // namespace cardvault::config

#endif  // CARDVAULT_SERVER_CONFIG_CONFIG_LOADER_H_
