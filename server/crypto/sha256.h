// SHA-256 of public data (e.g. a policy file, for evidence of what was in
// force), lowercase hex. Never for secrets or card data: those take a keyed
// HMAC (hmac_sha256.h).
#ifndef CARDVAULT_SERVER_CRYPTO_SHA256_H_
#define CARDVAULT_SERVER_CRYPTO_SHA256_H_

#include <memory>
#include <string>

#include "absl/strings/string_view.h"

namespace cardvault::crypto {

std::string Sha256Hex(absl::string_view data);

// SHA-256 over data fed in pieces (e.g. every record of a table).
//
// Thread safety: not thread-safe; one owner.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;

  void Update(absl::string_view data);
  // The 32-byte digest of everything fed so far; the object is then reset.
  std::string Finish();

 private:
  struct Context;
  std::unique_ptr<Context> context_;
};

}  // namespace cardvault::crypto

#endif  // CARDVAULT_SERVER_CRYPTO_SHA256_H_
