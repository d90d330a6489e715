#include "tests/testing/card_data_scan.h"

#include <algorithm>
#include <cstddef>

#include "absl/strings/ascii.h"

namespace cardvault::testing {

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string WithHexDecoded(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t done = 0, at = 0;
  while ((at = text.find("\\x", at)) != absl::string_view::npos) {
    size_t end = at + 2;
    while (end < text.size() && HexValue(text[end]) >= 0) ++end;
    if ((end - at - 2) % 2 != 0) --end;  // an odd digit stays text
    out.append(text.data() + done, at - done);
    for (size_t i = at + 2; i < end; i += 2) {
      out.push_back(
          static_cast<char>(HexValue(text[i]) * 16 + HexValue(text[i + 1])));
    }
    done = at = std::max(end, at + 2);
  }
  out.append(text.data() + done, text.size() - done);
  return out;
}

absl::flat_hash_set<std::string> DigitStringsIn(
    absl::string_view bytes, const absl::flat_hash_set<std::string>& wanted) {
  absl::flat_hash_set<std::string> found;
  if (wanted.empty()) return found;
  size_t min_len = SIZE_MAX, max_len = 0;
  for (const std::string& w : wanted) {
    min_len = std::min(min_len, w.size());
    max_len = std::max(max_len, w.size());
  }
  size_t i = 0;
  while (i < bytes.size()) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(bytes[i]))) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < bytes.size() &&
           absl::ascii_isdigit(static_cast<unsigned char>(bytes[end]))) {
      ++end;
    }
    const absl::string_view run = bytes.substr(i, end - i);
    for (size_t len = min_len; len <= max_len && len <= run.size(); ++len) {
      for (size_t start = 0; start + len <= run.size(); ++start) {
        const absl::string_view candidate = run.substr(start, len);
        if (wanted.contains(candidate)) found.insert(std::string(candidate));
      }
    }
    i = end;
  }
  return found;
}

absl::flat_hash_set<std::string> DigitStringsAfter(
    absl::string_view bytes, absl::string_view prefix,
    const absl::flat_hash_set<std::string>& wanted) {
  absl::flat_hash_set<std::string> found;
  if (wanted.empty() || prefix.empty()) return found;
  const size_t len = wanted.begin()->size();
  size_t at = 0;
  while ((at = bytes.find(prefix, at)) != absl::string_view::npos) {
    const absl::string_view value = bytes.substr(at + prefix.size(), len);
    if (value.size() == len && wanted.contains(value)) {
      found.insert(std::string(value));
    }
    ++at;
  }
  return found;
}

}  // namespace cardvault::testing
