#include "server/util/node_address.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "server/util/safe_text.h"

namespace cardvault::util {
namespace {

bool IsDnsNameOrIpv4(absl::string_view host) {
  if (host.empty() || host.size() > 253 || host.front() == '.' ||
      host.front() == '-' || host.back() == '.') {
    return false;
  }
  return std::all_of(host.begin(), host.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' ||
           c == '.';
  });
}

bool IsBracketedIpv6(absl::string_view host) {
  if (host.size() < 4 || host.front() != '[' || host.back() != ']') {
    return false;
  }
  host = host.substr(1, host.size() - 2);
  return std::all_of(host.begin(), host.end(), [](char c) {
    return absl::ascii_isxdigit(static_cast<unsigned char>(c)) || c == ':' ||
           c == '.';
  });
}

}  // namespace

bool IsNodeAddress(absl::string_view address) {
  if (address.size() > kMaxNodeAddressBytes) return false;
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) return false;
  const absl::string_view host = address.substr(0, colon);
  const absl::string_view port = address.substr(colon + 1);
  uint32_t number = 0;
  if (port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(),
                   [](char c) { return c >= '0' && c <= '9'; }) ||
      !absl::SimpleAtoi(port, &number) || number == 0 || number > 65535) {
    return false;
  }
  if (!IsDnsNameOrIpv4(host) && !IsBracketedIpv6(host)) return false;
  if (host == "0.0.0.0" || host == "[::]" || host == "[::0]" ||
      host == "[0:0:0:0:0:0:0:0]") {
    return false;
  }
  return SafeText(address, kMaxNodeAddressBytes, CardNumbers::kGroupedToo) ==
         address;
}

}  // namespace cardvault::util
