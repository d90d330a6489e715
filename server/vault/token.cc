#include "server/vault/token.h"

#include <algorithm>
#include <array>
#include <cstdint>

#include "absl/strings/match.h"
#include "server/crypto/random.h"
#include "server/vault/card.h"

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
  if (absl::Status s = crypto::FillPublicRandom(absl::MakeSpan(bytes));
      !s.ok()) {
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

size_t KeptBinDigits(size_t pan_length, size_t bin_digits) {
  const size_t wanted = bin_digits == 8 ? 8 : 6;
  const size_t most = pan_length >= kKeptLastDigits + kMinHiddenPanDigits
                          ? pan_length - kKeptLastDigits - kMinHiddenPanDigits
                          : 0;
  return std::min(wanted, most);
}

absl::StatusOr<std::string> GenerateNumericToken(TokenFormat format,
                                                 absl::string_view pan,
                                                 size_t bin_digits) {
  if (pan.size() < kMinPanDigits || pan.size() > kMaxPanDigits ||
      (format != TokenFormat::kLastFour &&
       format != TokenFormat::kBinLastFour)) {
    return absl::InvalidArgumentError("no numeric token for this input");
  }
  const size_t lead = format == TokenFormat::kBinLastFour
                          ? KeptBinDigits(pan.size(), bin_digits)
                          : 0;
  const size_t free_end = pan.size() - kKeptLastDigits;
  std::string token(pan);
  for (int draw = 0; draw < kMaxLuhnDraws; ++draw) {
    // Bytes >= 250 are rejected so that each digit is uniform.
    std::array<uint8_t, 32> bytes;
    size_t used = bytes.size();
    for (size_t i = lead; i < free_end; ++i) {
      uint8_t b;
      do {
        if (used == bytes.size()) {
          if (absl::Status s = crypto::FillPublicRandom(absl::MakeSpan(bytes));
              !s.ok()) {
            return s;
          }
          used = 0;
        }
        b = bytes[used++];
      } while (b >= 250);
      token[i] = static_cast<char>('0' + b % 10);
    }
    if (!PassesLuhn(token) && token != pan) return token;
  }
  return absl::InternalError("could not draw a Luhn-failing token");
}

bool IsWellFormedToken(absl::string_view token) {
  if (!token.empty() && token[0] >= '0' && token[0] <= '9') {
    if (token.size() < kMinPanDigits || token.size() > kMaxPanDigits) {
      return false;
    }
    for (char c : token) {
      if (c < '0' || c > '9') return false;
    }
    return !PassesLuhn(token);
  }
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
