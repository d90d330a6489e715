// Clients of a test server, with identities from a TestEnv's PKI.
#ifndef CARDVAULT_TESTS_TESTING_CLIENTS_H_
#define CARDVAULT_TESTS_TESTING_CLIENTS_H_

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/vault_client.h"
#include "tests/testing/test_env.h"

namespace cardvault::testing {

// Options for a client presenting pki/NAME.crt to the server at `address`.
inline client::ClientOptions ClientOptionsFor(const TestEnv& env,
                                              const std::string& address,
                                              absl::string_view name) {
  client::ClientOptions o;
  o.address = address;
  o.ca_file = env.pki("ca.crt");
  o.cert_file = env.pki(absl::StrCat(name, ".crt"));
  o.key_file = env.pki(absl::StrCat(name, ".key"));
  o.deadline = absl::Seconds(10);
  return o;
}

inline std::unique_ptr<client::VaultClient> ClientFor(
    const TestEnv& env, const std::string& address, absl::string_view name) {
  return *client::VaultClient::Create(ClientOptionsFor(env, address, name));
}

}  // namespace cardvault::testing

#endif  // CARDVAULT_TESTS_TESTING_CLIENTS_H_
