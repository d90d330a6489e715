// Checks every service makes of a request message before translating it.
#ifndef CARDVAULT_SERVER_SERVICE_REQUEST_CHECKS_H_
#define CARDVAULT_SERVER_SERVICE_REQUEST_CHECKS_H_

#include <google/protobuf/duration.pb.h>
#include <google/protobuf/message.h>
#include <google/protobuf/timestamp.pb.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace cardvault::service {

// True if `message`, or any message inside it (singular or repeated), holds
// fields this server does not know (e.g. sent by a newer client): such a
// request is refused rather than partly understood.
bool HasUnknownFields(const google::protobuf::Message& message);

// The duration `d` means; INVALID_ARGUMENT (naming `field`) unless it is a
// valid google.protobuf.Duration: |seconds| <= 315,576,000,000, |nanos| <
// 10^9, and both of the same sign.
absl::StatusOr<absl::Duration> DurationFromProto(
    const google::protobuf::Duration& d, absl::string_view field);

// The time `t` means; INVALID_ARGUMENT (naming `field`) unless it is a valid
// google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z,
// 0 <= nanos < 10^9.
absl::StatusOr<absl::Time> TimeFromProto(const google::protobuf::Timestamp& t,
                                         absl::string_view field);

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_REQUEST_CHECKS_H_
