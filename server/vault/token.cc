#include "server/vault/token.h"

#include <array>
#include <cstdint>

#include "absl/strings/match.h"
#include "server/crypto/random.h"

namespace cardvault::vault {
namespace {

constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz234567";

int DecodeChar(char c) {
  if (c >= 'a' && c <= 'z') return c - 'a';
  if (c >= '2' && c <= '7') return c - '2' + 26;
  return -1;
}

}  // namespace

absl::StatusOr<std::string> GenerateToken() {
  std::array<uint8_t, kTokenRandomBytes> bytes;
  if (absl::Status s = crypto::FillRandom(absl::MakeSpan(bytes)); !s.ok()) {
    return s;
  }
  std::string token(kTokenPrefix);
  token.reserve(kTokenLength);
  uint32_t buffer = 0;
  int bits = 0;
  for (uint8_t b : bytes) {
    buffer = (buffer << 8) | b;
    bits += 8;
    while (bits >= 5) {
      token.push_back(kAlphabet[(buffer >> (bits - 5)) & 0x1F]);
      bits -= 5;
    }
  }
  if (bits > 0) token.push_back(kAlphabet[(buffer << (5 - bits)) & 0x1F]);
  return token;
}

bool IsWellFormedToken(absl::string_view token) {
  if (token.size() != kTokenLength || !absl::StartsWith(token, kTokenPrefix)) {
    return false;
  }
  absl::string_view body = token.substr(kTokenPrefix.size());
  for (char c : body) {
    if (DecodeChar(c) < 0) return false;
  }
  // 26 characters carry 130 bits; the 2 unused bits must be zero.
  return (DecodeChar(body.back()) & 0x3) == 0;
}

}  // namespace cardvault::vault
