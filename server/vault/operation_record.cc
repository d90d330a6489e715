#include "server/vault/operation_record.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "openssl/crypto.h"
#include "server/util/big_endian.h"
#include "server/util/safe_text.h"

namespace cardvault::vault {
namespace {

// Stored states (the file comment's byte 2).
enum StoredState : uint8_t {
  kStoredPending = 1,
  kStoredExecuting = 2,
  kStoredExecuted = 3,
  kStoredFailed = 4,
};

constexpr size_t kFixedBytes = 32;

bool IsPrintable(absl::string_view text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return c >= 0x20 && c <= 0x7e; });
}

bool IsKind(uint32_t kind) { return kind >= 1 && kind <= 4; }

void AppendString(absl::string_view s, std::string* out) {
  util::AppendBigEndian16(static_cast<uint16_t>(s.size()), out);
  out->append(s.data(), s.size());
}

// Reads a string of at most `max` bytes at `*pos`, advancing it.
bool ReadString(absl::string_view in, size_t* pos, size_t max,
                std::string* out) {
  if (in.size() - *pos < 2) return false;
  const size_t n = util::ReadBigEndian16(in.substr(*pos, 2));
  *pos += 2;
  if (n > max || in.size() - *pos < n) return false;
  *out = std::string(in.substr(*pos, n));
  *pos += n;
  return true;
}

// The rules of the file comment, on the fields of `op`.
bool FollowsRules(const Operation& op) {
  if (!IsOperationId(op.id) || !IsKind(static_cast<uint32_t>(op.kind)) ||
      op.required_approvals < 2 ||
      op.required_approvals > kMaxRequiredApprovals ||
      op.reason.size() > kMaxReasonBytes || !IsRecordableReason(op.reason) ||
      op.approvers.empty() || op.approvers.size() > op.required_approvals ||
      op.outcome.size() > kMaxOutcomeBytes || !IsStorableText(op.outcome)) {
    return false;
  }
  for (size_t i = 0; i < op.approvers.size(); ++i) {
    const std::string& a = op.approvers[i];
    if (a.empty() || a.size() > kMaxStoredIdentityBytes || !IsStorableText(a) ||
        std::find(op.approvers.begin(), op.approvers.begin() + i, a) !=
            op.approvers.begin() + i) {
      return false;
    }
  }
  return true;
}

}  // namespace

bool IsOperationId(absl::string_view id) {
  return id.size() == kOperationIdBytes && absl::StartsWith(id, "op_") &&
         std::all_of(id.begin() + 3, id.end(),
                     [](char c) {
                       return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
                     }) &&
         !util::HoldsCardNumber(id);
}

bool IsRecordableReason(absl::string_view reason) {
  // The digits as one run across separators, broken only by more than
  // kMaxLettersInCardNumber letters.
  std::string joined;
  size_t letters = 0;
  for (char c : reason) {
    if (c < 0x20 || c > 0x7e) return false;
    if (absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      if (letters > kMaxLettersInCardNumber) joined.push_back(' ');
      letters = 0;
      joined.push_back(c);
    } else if (absl::ascii_isalpha(static_cast<unsigned char>(c))) {
      ++letters;
    }
  }
  return !util::HoldsCardNumber(joined);
}

bool IsStorableText(absl::string_view text) {
  return IsPrintable(text) && !util::HoldsCardNumber(text);
}

namespace {

constexpr absl::string_view kMacLabel = "cardvault/operation-record";

bool VerifyTag(const crypto::HmacSha256& mac, absl::string_view signed_part,
               absl::string_view tag) {
  const std::string expected = mac.ComputeSecret({kMacLabel, signed_part});
  return tag.size() == expected.size() &&
         CRYPTO_memcmp(tag.data(), expected.data(), tag.size()) == 0;
}

}  // namespace

std::string OperationKey(absl::string_view id) {
  return absl::StrCat(kOperationKeyPrefix, id);
}

absl::StatusOr<std::string> EncodeOperationRecord(const Operation& op,
                                                  const OperationMac& mac) {
  if (mac.mac == nullptr) {
    return absl::InvalidArgumentError("no operation MAC key");
  }
  uint8_t state = 0;
  switch (op.state) {
    case OperationState::kPending:
      state = kStoredPending;
      break;
    case OperationState::kExecuting:
      state = kStoredExecuting;
      break;
    case OperationState::kExecuted:
      state = kStoredExecuted;
      break;
    case OperationState::kFailed:
      state = kStoredFailed;
      break;
    case OperationState::kExpired:
      break;
  }
  if (state == 0 || !FollowsRules(op)) {
    return absl::InvalidArgumentError(
        "operation record breaks a rule of its format");
  }
  std::string out(1, static_cast<char>(kOperationRecordV2));
  out.push_back(static_cast<char>(op.kind));
  out.push_back(static_cast<char>(state));
  util::AppendBigEndian32(op.key_version, &out);
  out.push_back(static_cast<char>(op.required_approvals));
  util::AppendUnixMillis(op.proposed, &out);
  util::AppendUnixMillis(op.expires, &out);
  util::AppendUnixMillis(op.changed, &out);
  AppendString(op.id, &out);
  AppendString(op.reason, &out);
  out.push_back(static_cast<char>(op.approvers.size()));
  for (const std::string& a : op.approvers) AppendString(a, &out);
  AppendString(op.outcome, &out);
  util::AppendBigEndian32(mac.version, &out);
  out.append(mac.mac->ComputeSecret({kMacLabel, out}));
  return out;
}

absl::StatusOr<Operation> DecodeOperationRecord(absl::string_view value,
                                                const OperationMac& mac) {
  const absl::Status bad = absl::DataLossError("operation record is malformed");
  constexpr size_t kTrailer = 4 + crypto::HmacSha256::kMacSize;
  if (mac.mac == nullptr || value.size() < kFixedBytes + kTrailer ||
      static_cast<uint8_t>(value[0]) != kOperationRecordV2 ||
      !IsKind(static_cast<uint8_t>(value[1]))) {
    return bad;
  }
  // Nothing of a record is believed before its MAC is.
  const absl::string_view signed_part =
      value.substr(0, value.size() - crypto::HmacSha256::kMacSize);
  if (util::ReadBigEndian32(value.substr(signed_part.size() - 4, 4)) !=
          mac.version ||
      !VerifyTag(*mac.mac, signed_part, value.substr(signed_part.size()))) {
    return absl::DataLossError(
        "operation record does not verify under the operation key");
  }
  value = signed_part.substr(0, signed_part.size() - 4);
  Operation op;
  op.kind = static_cast<OperationKind>(static_cast<uint8_t>(value[1]));
  switch (static_cast<uint8_t>(value[2])) {
    case kStoredPending:
      op.state = OperationState::kPending;
      break;
    case kStoredExecuting:
      op.state = OperationState::kExecuting;
      break;
    case kStoredExecuted:
      op.state = OperationState::kExecuted;
      break;
    case kStoredFailed:
      op.state = OperationState::kFailed;
      break;
    default:
      return bad;
  }
  op.key_version = util::ReadBigEndian32(value.substr(3, 4));
  op.required_approvals = static_cast<uint8_t>(value[7]);
  // 0 would read as "never": no stored time is 0.
  op.proposed = util::ReadUnixMillis(value.substr(8, 8), absl::UnixEpoch());
  op.expires = util::ReadUnixMillis(value.substr(16, 8), absl::UnixEpoch());
  op.changed = util::ReadUnixMillis(value.substr(24, 8), absl::UnixEpoch());
  size_t pos = kFixedBytes;
  if (!ReadString(value, &pos, kOperationIdBytes, &op.id) ||
      !ReadString(value, &pos, kMaxReasonBytes, &op.reason) ||
      pos >= value.size()) {
    return bad;
  }
  const size_t approvers = static_cast<uint8_t>(value[pos++]);
  if (approvers == 0 || approvers > kMaxRequiredApprovals) return bad;
  op.approvers.resize(approvers);
  for (std::string& a : op.approvers) {
    if (!ReadString(value, &pos, kMaxStoredIdentityBytes, &a)) return bad;
  }
  if (!ReadString(value, &pos, kMaxOutcomeBytes, &op.outcome) ||
      pos != value.size() || !FollowsRules(op)) {
    return bad;
  }
  op.proposer = op.approvers[0];
  return op;
}

OperationState EffectiveState(const Operation& op, absl::Time now) {
  if (op.state == OperationState::kPending && now >= op.expires) {
    return OperationState::kExpired;
  }
  return op.state;
}

}  // namespace cardvault::vault
