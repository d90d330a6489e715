// SHA-256 of public data (e.g. a policy file, for evidence of what was in
// force), lowercase hex. Never for secrets or card data: those take a keyed
// HMAC (hmac_sha256.h).
#ifndef CARDVAULT_SERVER_CRYPTO_SHA256_H_
#define CARDVAULT_SERVER_CRYPTO_SHA256_H_

#include <string>

#include "absl/strings/string_view.h"

namespace cardvault::crypto {

std::string Sha256Hex(absl::string_view data);

}  // namespace cardvault::crypto

#endif  // CARDVAULT_SERVER_CRYPTO_SHA256_H_
