#include "server/vault/cvv_holders.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/util/big_endian.h"
#include "server/util/node_address.h"

namespace cardvault::vault {
namespace {

constexpr size_t kFixedBytes = 1 + 8 + 1;

}  // namespace

std::string CvvHolderKey(absl::string_view token) {
  return absl::StrCat(kCvvHolderKeyPrefix, token);
}

bool IsCvvHolderKey(absl::string_view key) {
  return absl::StartsWith(key, kCvvHolderKeyPrefix);
}

absl::StatusOr<std::string> EncodeCvvHolder(const CvvHolder& holder) {
  if (!util::IsNodeAddress(holder.address)) {
    return absl::InvalidArgumentError(
        "a node address is 1 to 255 printable ASCII characters");
  }
  std::string out;
  out.reserve(kFixedBytes + holder.address.size());
  out.push_back(static_cast<char>(kCvvHolderFormatV1));
  util::AppendBigEndian64(static_cast<uint64_t>(std::max<int64_t>(
                              0, absl::ToUnixMillis(holder.expires))),
                          &out);
  out.push_back(static_cast<char>(holder.address.size()));
  out.append(holder.address);
  return out;
}

absl::StatusOr<CvvHolder> DecodeCvvHolder(absl::string_view value) {
  if (value.size() < kFixedBytes ||
      static_cast<uint8_t>(value[0]) != kCvvHolderFormatV1) {
    return absl::DataLossError("CVV holder row is not in format 1");
  }
  const size_t length = static_cast<uint8_t>(value[9]);
  if (value.size() != kFixedBytes + length) {
    return absl::DataLossError("CVV holder row has a bad length");
  }
  CvvHolder holder;
  holder.expires = absl::FromUnixMillis(
      static_cast<int64_t>(util::ReadBigEndian64(value.substr(1, 8))));
  holder.address = std::string(value.substr(kFixedBytes));
  if (!util::IsNodeAddress(holder.address)) {
    return absl::DataLossError("CVV holder row has a bad address");
  }
  return holder;
}

}  // namespace cardvault::vault
