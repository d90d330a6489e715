#include "server/util/safe_text.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"

namespace cardvault::util {
namespace {

constexpr absl::string_view kEllipsis = "...";

bool IsDigit(char c) {
  return absl::ascii_isdigit(static_cast<unsigned char>(c));
}

// Whether some 12-19 digit window of the digit run `run` passes Luhn.
bool AnyWindowPassesLuhn(absl::string_view run) {
  for (size_t len = kMinCardDigits; len <= std::min(run.size(), kMaxCardDigits);
       ++len) {
    for (size_t at = 0; at + len <= run.size(); ++at) {
      if (PassesLuhn(run.substr(at, len))) return true;
    }
  }
  return false;
}

bool IsSeparator(char c) {
  return c == ' ' || c == '-' || c == '.' || c == '_' || c == '/';
}

// Masks, in place, digits joined by single separators when there are 12 or
// more of them.
void MaskGroupedDigits(std::string& text) {
  size_t i = 0;
  while (i < text.size()) {
    if (!IsDigit(text[i])) {
      ++i;
      continue;
    }
    size_t end = i;
    size_t digits = 0;
    while (end < text.size()) {
      if (IsDigit(text[end])) {
        ++digits;
        ++end;
      } else if (IsSeparator(text[end]) && end + 1 < text.size() &&
                 IsDigit(text[end + 1])) {
        ++end;
      } else {
        break;
      }
    }
    if (digits >= kMinCardDigits) {
      for (size_t j = i; j < end; ++j) {
        if (IsDigit(text[j])) text[j] = '*';
      }
    }
    i = end;
  }
}

// Masks, in place, the digit runs of `text` that may be or hold a card
// number (see SafeText).
void MaskCardNumbers(std::string& text, CardNumbers rule) {
  if (rule == CardNumbers::kGroupedToo) MaskGroupedDigits(text);
  size_t i = 0;
  while (i < text.size()) {
    if (!IsDigit(text[i])) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < text.size() && IsDigit(text[end])) ++end;
    const size_t run = end - i;
    const absl::string_view digits = absl::string_view(text).substr(i, run);
    size_t masked_end = i;  // digits [i, masked_end) become '*'
    if (run > kMaxCardDigits) {
      masked_end = end;
    } else if (run >= kMinCardDigits && PassesLuhn(digits)) {
      masked_end = end - 4;
    } else if (run > kMinCardDigits && rule != CardNumbers::kExactRuns &&
               AnyWindowPassesLuhn(digits)) {
      masked_end = end;
    }
    std::fill(text.begin() + i, text.begin() + masked_end, '*');
    i = end;
  }
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
  std::string copy(text);
  MaskCardNumbers(copy, CardNumbers::kAnyWithin);
  return copy != text;
}

std::string SafeText(absl::string_view text, size_t max_bytes,
                     CardNumbers rule) {
  // Escaped first, so that the digits of an escape are masked with any
  // digits they join.
  std::string out;
  out.reserve(text.size() + 8);
  for (char c : text) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u <= 0x7e && c != '\\') {
      out.push_back(c);
    } else {
      absl::StrAppendFormat(&out, "\\x%02x", u);
    }
  }
  MaskCardNumbers(out, rule);
  if (out.size() <= max_bytes) return out;
  // Cut before an escape or a run of digits that the bound would split, so
  // that no part of either is left at the end.
  size_t cut = max_bytes;
  if (size_t slash = out.rfind('\\', cut);
      slash != std::string::npos && cut - slash < 4) {
    cut = slash;
  }
  while (cut > 0 && IsDigit(out[cut - 1]) && IsDigit(out[cut])) --cut;
  out.resize(cut);
  out.append(kEllipsis.data(), kEllipsis.size());
  return out;
}

}  // namespace cardvault::util
