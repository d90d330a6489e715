// Random token strings.
//
// Format: "tok_" followed by 26 characters of lowercase RFC 4648 base32
// ("a-z2-7", no padding) encoding 16 bytes (128 bits) from the CSPRNG; the
// last character carries 3 bits and is always one of "aeimquy4" (low two
// bits zero). A token is never derived from card data, cannot pass for a PAN
// (it has letters and a prefix), and is exactly kTokenLength characters.
#ifndef CARDVAULT_SERVER_VAULT_TOKEN_H_
#define CARDVAULT_SERVER_VAULT_TOKEN_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace cardvault::vault {

inline constexpr absl::string_view kTokenPrefix = "tok_";
inline constexpr size_t kTokenRandomBytes = 16;
inline constexpr size_t kTokenLength = 4 + 26;

// A new token with 128 bits from RAND_bytes; UNAVAILABLE if the CSPRNG fails.
absl::StatusOr<std::string> GenerateToken();

// True if `token` has exactly the format above (canonical encoding only).
bool IsWellFormedToken(absl::string_view token);

}  // namespace cardvault::vault

#endif  // CARDVAULT_SERVER_VAULT_TOKEN_H_
