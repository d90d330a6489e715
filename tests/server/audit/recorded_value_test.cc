#include "server/audit/recorded_value.h"

#include <google/protobuf/descriptor.h>

#include <set>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cardvault::audit {
namespace {

using ::google::protobuf::FieldDescriptor;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;

std::unique_ptr<crypto::HmacSha256> Key(char fill) {
  return *crypto::HmacSha256::Create(
      crypto::SecretBytes(std::string(32, fill)));
}

TEST(ValueMarkerTest, MarkerHoldsLengthAndKeyedMacButNothingOfTheValue) {
  auto key = Key('a');
  ValueMarker marker(key.get());
  const std::string m = marker.Mark("4111111111111111");
  EXPECT_THAT(m, MatchesRegex("<unverified len=16 mac=[a-p]{16}>"));
  EXPECT_THAT(m, Not(HasSubstr("1111")));
  EXPECT_LE(m.size(), kMaxMarkerBytes);
  // Same value, same marker (correlation); another value or key, another.
  EXPECT_EQ(marker.Mark("4111111111111111"), m);
  EXPECT_NE(marker.Mark("4111111111111129"), m);
  auto other_key = Key('b');
  EXPECT_NE(ValueMarker(other_key.get()).Mark("4111111111111111"), m);
  // Markers are bounded whatever the value.
  EXPECT_LE(marker.Mark(std::string(1 << 20, 'x')).size(), kMaxMarkerBytes);
}

TEST(ValueMarkerTest, RecordsVerifiedValuesAsThemselves) {
  auto key = Key('a');
  ValueMarker marker(key.get());
  EXPECT_EQ(marker.Recorded("m1/pos", true), "m1/pos");
  EXPECT_THAT(marker.Recorded("m1/pos", false), HasSubstr("<unverified len=6"));
  EXPECT_EQ(marker.Recorded("", false), "");
}

// Every string field of a record is either made safe or computed by the
// server in hex: a field added to AuditEvent or BatchItem without a decision
// fails here.
TEST(SafeEventTest, EveryStringFieldIsMaskedExceptServerComputedHex) {
  const std::set<std::string> exempt = {
      "cardvault.v1.AuditEvent.certificate_serial",
      "cardvault.v1.AuditEvent.certificate_sha256",
      "cardvault.v1.AuditEvent.request_id"};
  const std::string pan = "4111111111111111";
  v1::AuditEvent event;
  auto* item = event.add_items();
  for (google::protobuf::Message* m :
       {static_cast<google::protobuf::Message*>(&event),
        static_cast<google::protobuf::Message*>(item)}) {
    const auto* d = m->GetDescriptor();
    for (int i = 0; i < d->field_count(); ++i) {
      const FieldDescriptor* f = d->field(i);
      if (f->type() == FieldDescriptor::TYPE_STRING) {
        m->GetReflection()->SetString(m, f, "id " + pan + "\n");
      }
      ASSERT_NE(f->type(), FieldDescriptor::TYPE_BYTES) << f->full_name();
    }
  }
  SafeEvent(&event);
  for (const google::protobuf::Message* m :
       {static_cast<const google::protobuf::Message*>(&event),
        static_cast<const google::protobuf::Message*>(&event.items(0))}) {
    const auto* d = m->GetDescriptor();
    for (int i = 0; i < d->field_count(); ++i) {
      const FieldDescriptor* f = d->field(i);
      if (f->type() != FieldDescriptor::TYPE_STRING) continue;
      const std::string v = m->GetReflection()->GetString(*m, f);
      if (exempt.contains(f->full_name())) {
        EXPECT_EQ(v, "id " + pan + "\n") << f->full_name();
      } else {
        EXPECT_EQ(v, "id ************1111\\x0a") << f->full_name();
      }
    }
  }
}

TEST(SafeEventTest, BoundsEachField) {
  v1::AuditEvent event;
  event.set_detail(std::string(100000, 'd'));
  event.set_status_message(std::string(100000, 's'));
  event.set_identity(std::string(100000, 'i'));
  SafeEvent(&event);
  EXPECT_LE(event.detail().size(), kMaxRecordedDetailBytes + 3);
  EXPECT_LE(event.status_message().size(), kMaxRecordedStatusMessageBytes + 3);
  EXPECT_LE(event.identity().size(), kMaxRecordedIdentityBytes + 3);
}

}  // namespace
}  // namespace cardvault::audit
