// The form of an address one vault node reaches another at (cluster
// configuration, CVV holder rows): host:port and nothing else, so that an
// address read from the store can name neither a scheme (unix:, dns://), a
// resolver, nor a wildcard, nor hold card data.
//
// Thread safety: pure functions.
#ifndef CARDVAULT_SERVER_UTIL_NODE_ADDRESS_H_
#define CARDVAULT_SERVER_UTIL_NODE_ADDRESS_H_

#include <cstddef>

#include "absl/strings/string_view.h"

namespace cardvault::util {

inline constexpr size_t kMaxNodeAddressBytes = 255;

// True for "host:port" within kMaxNodeAddressBytes: host a DNS name
// (letters, digits, '-' and '.'), an IPv4 literal or a bracketed IPv6
// literal, not a wildcard (0.0.0.0, [::]); port 1-65535; no digit run that
// could be a card number.
bool IsNodeAddress(absl::string_view address);

}  // namespace cardvault::util

#endif  // CARDVAULT_SERVER_UTIL_NODE_ADDRESS_H_
