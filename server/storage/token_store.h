// Storage interfaces the vault depends on. They hold opaque bytes only:
// sealed records and wrapped keys, never anything in clear.
//
// Thread safety: implementations are thread-safe.
#ifndef CARDVAULT_SERVER_STORAGE_TOKEN_STORE_H_
#define CARDVAULT_SERVER_STORAGE_TOKEN_STORE_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace cardvault::storage {

// Token -> sealed card record.
class TokenStore {
 public:
  virtual ~TokenStore() = default;

  // Stores `record` under `token` if no record exists there. Returns OK only
  // once the write is durable (fsynced), ALREADY_EXISTS if the token is taken,
  // UNAVAILABLE if storage cannot be written.
  virtual absl::Status Insert(absl::string_view token,
                              absl::string_view record) const = 0;

  // The record under `token`, NOT_FOUND if none.
  virtual absl::StatusOr<std::string> Lookup(absl::string_view token) const = 0;
};

// Key id -> wrapped key record.
class KeyStore {
 public:
  virtual ~KeyStore() = default;

  // Stores `record` under `key_id` durably; ALREADY_EXISTS if taken (keys are
  // never overwritten).
  virtual absl::Status InsertKey(absl::string_view key_id,
                                 absl::string_view record) const = 0;

  // Every (key id, record) pair, in key id order.
  virtual absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
  ListKeys() const = 0;
};

}  // namespace cardvault::storage

#endif  // CARDVAULT_SERVER_STORAGE_TOKEN_STORE_H_
