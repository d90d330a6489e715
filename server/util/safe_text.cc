#include "server/util/safe_text.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"

namespace cardvault::util {
namespace {

constexpr absl::string_view kEllipsis = "...";

// The digits of `text` with possible card numbers masked (see SafeText).
std::string MaskCardNumbers(absl::string_view text) {
  std::string out(text);
  size_t i = 0;
  while (i < out.size()) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(out[i]))) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < out.size() &&
           absl::ascii_isdigit(static_cast<unsigned char>(out[end]))) {
      ++end;
    }
    const size_t run = end - i;
    if (run > kMaxCardDigits) {
      for (size_t j = i; j < end; ++j) out[j] = '*';
    } else if (run >= kMinCardDigits &&
               PassesLuhn(absl::string_view(out).substr(i, run))) {
      for (size_t j = i; j < end - 4; ++j) out[j] = '*';
    }
    i = end;
  }
  return out;
}

}  // namespace

bool PassesLuhn(absl::string_view digits) {
  int sum = 0;
  bool double_it = false;
  for (auto it = digits.rbegin(); it != digits.rend(); ++it) {
    int d = *it - '0';
    if (double_it) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    double_it = !double_it;
  }
  return sum % 10 == 0;
}

bool HoldsCardNumber(absl::string_view text) {
  return MaskCardNumbers(text) != text;
}

std::string SafeText(absl::string_view text, size_t max_bytes) {
  const std::string masked = MaskCardNumbers(text);
  std::string out;
  out.reserve(std::min(masked.size(), max_bytes) + kEllipsis.size());
  for (char c : masked) {
    const unsigned char u = static_cast<unsigned char>(c);
    const bool plain = u >= 0x20 && u <= 0x7e && c != '\\';
    const size_t width = plain ? 1 : 4;
    if (out.size() + width > max_bytes) {
      out.append(kEllipsis.data(), kEllipsis.size());
      return out;
    }
    if (plain) {
      out.push_back(c);
    } else {
      absl::StrAppendFormat(&out, "\\x%02x", u);
    }
  }
  return out;
}

}  // namespace cardvault::util
