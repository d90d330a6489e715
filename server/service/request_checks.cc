#include "server/service/request_checks.h"

#include <cstdint>

#include "absl/strings/str_cat.h"

namespace cardvault::service {
namespace {

using google::protobuf::FieldDescriptor;

// The range google/protobuf/duration.proto and timestamp.proto define.
constexpr int64_t kMaxDurationSeconds = 315'576'000'000;
constexpr int64_t kMinTimestampSeconds = -62'135'596'800;  // 0001-01-01
constexpr int64_t kMaxTimestampSeconds = 253'402'300'799;  // 9999-12-31
constexpr int32_t kNanosPerSecond = 1'000'000'000;

}  // namespace

bool HasUnknownFields(const google::protobuf::Message& message) {
  const google::protobuf::Reflection* reflection = message.GetReflection();
  if (!reflection->GetUnknownFields(message).empty()) return true;
  const google::protobuf::Descriptor* descriptor = message.GetDescriptor();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const FieldDescriptor* field = descriptor->field(i);
    if (field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (field->is_repeated()) {
      for (int j = 0; j < reflection->FieldSize(message, field); ++j) {
        if (HasUnknownFields(
                reflection->GetRepeatedMessage(message, field, j))) {
          return true;
        }
      }
    } else if (reflection->HasField(message, field) &&
               HasUnknownFields(reflection->GetMessage(message, field))) {
      return true;
    }
  }
  return false;
}

absl::StatusOr<absl::Duration> DurationFromProto(
    const google::protobuf::Duration& d, absl::string_view field) {
  const int64_t s = d.seconds();
  const int32_t n = d.nanos();
  if (s < -kMaxDurationSeconds || s > kMaxDurationSeconds ||
      n <= -kNanosPerSecond || n >= kNanosPerSecond || (s > 0 && n < 0) ||
      (s < 0 && n > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " is not a valid duration"));
  }
  return absl::Seconds(s) + absl::Nanoseconds(n);
}

absl::StatusOr<absl::Time> TimeFromProto(const google::protobuf::Timestamp& t,
                                         absl::string_view field) {
  if (t.seconds() < kMinTimestampSeconds ||
      t.seconds() > kMaxTimestampSeconds || t.nanos() < 0 ||
      t.nanos() >= kNanosPerSecond) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " is not a valid timestamp"));
  }
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

}  // namespace cardvault::service
