// Leak sweeps that can see: test PANs go into every string and bytes field of
// every request of every RPC the server exposes (found by reflection, so a
// field added later is covered), as allowed, refused and unknown callers;
// then the audit trail, every RocksDB column family (decompressed), every
// file of the server's state and its log are searched for any of them.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/unknown_field_set.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <rocksdb/convenience.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/utilities/debug.h>
#include <rocksdb/utilities/options_util.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "client/vault_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/auth/access_policy.h"
#include "server/crypto/hmac_sha256.h"
#include "server/vault/card.h"
#include "server/vault/index_entry.h"
#include "server/vault/key_admin.h"
#include "tests/testing/clients.h"
#include "tests/testing/generic_call.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_cards.h"
#include "tests/testing/test_env.h"

namespace cardvault {
namespace {

namespace pb = ::google::protobuf;
using ::cardvault::testing::IsOk;

// Number of a field no request declares, sent to see whether the
// server records what it does not understand.
constexpr int kUnknownFieldNumber = 4242;
// Fields with no documented limit are padded to this length.
constexpr size_t kDefaultMaxBytes = 128;
// Protobuf nesting followed into request messages (none is recursive today).
constexpr int kMaxDepth = 6;

// The documented size limit of a request field, for the padded spellings.
size_t MaxBytes(const pb::FieldDescriptor* field) {
  static const auto* by_full_name =
      new absl::flat_hash_map<std::string, size_t>{
          {"cardvault.v1.Card.pan", vault::kMaxPanDigits},
          {"cardvault.v1.Card.cardholder_name", vault::kMaxCardholderNameBytes},
          {"cardvault.v1.TokenizeRequest.idempotency_key",
           vault::kMaxIdempotencyKeyBytes},
          {"cardvault.v1.TokenizeRequest.cvv", vault::kMaxCvvDigits},
          {"cardvault.v1.ProposeOperationRequest.reason",
           vault::kMaxReasonBytes},
          {"cardvault.v1.Checkpoint.mac", crypto::HmacSha256::kMacSize},
      };
  static const auto* by_name = new absl::flat_hash_map<std::string, size_t>{
      {"token", vault::kMaxStoredTokenBytes},
      {"domain", auth::kMaxDomainBytes},
      {"purpose", auth::kMaxPurposeBytes},
  };
  if (auto it = by_full_name->find(field->full_name());
      it != by_full_name->end()) {
    return it->second;
  }
  if (auto it = by_name->find(field->name()); it != by_name->end()) {
    return it->second;
  }
  return kDefaultMaxBytes;
}

std::string Padding(const std::string& pan, size_t max_bytes) {
  return std::string(max_bytes > pan.size() ? max_bytes - pan.size() : 0, 'x');
}

std::string Grouped(const std::string& pan, char separator) {
  std::string out;
  for (size_t i = 0; i < pan.size(); ++i) {
    if (i > 0 && i % 4 == 0) out.push_back(separator);
    out.push_back(pan[i]);
  }
  return out;
}

// U+0660..U+0669, which a grep for [0-9] misses.
std::string ArabicIndic(const std::string& pan) {
  std::string out;
  for (char c : pan) {
    out.push_back('\xD9');
    out.push_back(static_cast<char>(0xA0 + (c - '0')));
  }
  return out;
}

// How a PAN is written into a field: spellings a naive grep or a masker of
// plain digit runs would miss.
struct Spelling {
  const char* name;
  std::string (*spell)(const std::string& pan, size_t max_bytes);
};

const Spelling kSpellings[] = {
    {"plain", [](const std::string& p, size_t) { return p; }},
    {"inside text", [](const std::string& p, size_t) { return "x" + p + "y"; }},
    {"first of a max-length value",
     [](const std::string& p, size_t m) { return p + Padding(p, m); }},
    {"last of a max-length value",
     [](const std::string& p, size_t m) { return Padding(p, m) + p; }},
    {"first of an over-long value",
     [](const std::string& p, size_t m) { return p + std::string(m, 'x'); }},
    {"grouped by spaces",
     [](const std::string& p, size_t) { return Grouped(p, ' '); }},
    {"grouped by dashes",
     [](const std::string& p, size_t) { return Grouped(p, '-'); }},
    {"in Arabic-Indic digits",
     [](const std::string& p, size_t) { return ArabicIndic(p); }},
};
// The variant that also carries a plain PAN in an undeclared field.
constexpr char kUnknownFieldVariant[] = "plain, plus an unknown field";

// The digit at s[i] (ASCII, Arabic-Indic, extended Arabic-Indic or
// fullwidth) and its length in bytes, or -1.
int DigitAt(absl::string_view s, size_t i, size_t* length) {
  const auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  if (at(i) >= '0' && at(i) <= '9') {
    *length = 1;
    return at(i) - '0';
  }
  if (i + 1 < s.size()) {
    if (at(i) == 0xD9 && at(i + 1) >= 0xA0 && at(i + 1) <= 0xA9) {
      *length = 2;
      return at(i + 1) - 0xA0;
    }
    if (at(i) == 0xDB && at(i + 1) >= 0xB0 && at(i + 1) <= 0xB9) {
      *length = 2;
      return at(i + 1) - 0xB0;
    }
  }
  if (i + 2 < s.size() && at(i) == 0xEF && at(i + 1) == 0xBC &&
      at(i + 2) >= 0x90 && at(i + 2) <= 0x99) {
    *length = 3;
    return at(i + 2) - 0x90;
  }
  return -1;
}

// Runs of at least 12 digits in `s`, as ASCII: any digit script, a single
// space or dash between digits kept in the run, and runs of hex-encoded
// ASCII digits ("34313131...") decoded.
std::vector<std::string> DigitRuns(absl::string_view s) {
  std::vector<std::string> runs;
  std::string run;
  const auto flush = [&] {
    if (run.size() >= vault::kMinPanDigits) runs.push_back(run);
    run.clear();
  };
  size_t length = 0;
  for (size_t i = 0; i < s.size();) {
    const int digit = DigitAt(s, i, &length);
    if (digit >= 0) {
      run.push_back(static_cast<char>('0' + digit));
      i += length;
    } else if (!run.empty() && (s[i] == ' ' || s[i] == '-') &&
               i + 1 < s.size() && DigitAt(s, i + 1, &length) >= 0) {
      ++i;
    } else {
      flush();
      ++i;
    }
  }
  flush();
  const size_t plain_runs = runs.size();
  for (size_t r = 0; r < plain_runs; ++r) {
    for (size_t start = 0; start < 2; ++start) {
      std::string decoded;
      for (size_t i = start; i + 1 < runs[r].size(); i += 2) {
        if (runs[r][i] == '3') {
          decoded.push_back(runs[r][i + 1]);
        } else if (decoded.size() >= vault::kMinPanDigits) {
          runs.push_back(std::exchange(decoded, ""));
        } else {
          decoded.clear();
        }
      }
      if (decoded.size() >= vault::kMinPanDigits) runs.push_back(decoded);
    }
  }
  return runs;
}

// Every PAN the test sends, each exactly once, with where it was sent.
class PanLedger {
 public:
  struct Sending {
    std::string pan;
    std::string field;  // e.g. "TokenVault.Tokenize card.cardholder_name"
    std::string how;    // spelling and caller
  };

  PanLedger() {
    // Distinct, and none inside another, so that a PAN found names exactly
    // one sending.
    const std::vector<std::string> made = testing::MakePans(8000, 20240614);
    const absl::flat_hash_set<std::string> all(made.begin(), made.end());
    absl::flat_hash_set<std::string> nested;
    for (const std::string& pan : made) {
      for (size_t len = vault::kMinPanDigits; len < pan.size(); ++len) {
        for (size_t at = 0; at + len <= pan.size(); ++at) {
          if (all.contains(pan.substr(at, len))) {
            nested.insert(pan.substr(at, len));
            nested.insert(pan);
          }
        }
      }
    }
    for (const std::string& pan : made) {
      if (!nested.contains(pan)) pool_.push_back(pan);
    }
  }

  // A PAN never handed out before, recorded as sent in `field` (`how`).
  std::string Take(absl::string_view field, absl::string_view how) {
    if (sendings_.size() >= pool_.size()) {
      ADD_FAILURE() << "PAN pool exhausted; make PanLedger's pool larger";
      std::abort();
    }
    const std::string& pan = pool_[sendings_.size()];
    by_pan_[pan] = sendings_.size();
    sendings_.push_back({pan, std::string(field), std::string(how)});
    return pan;
  }

  // Indices of the sendings whose PAN occurs in `haystack`, in any spelling
  // DigitRuns normalises.
  std::set<size_t> FoundIn(absl::string_view haystack) const {
    std::set<size_t> found;
    for (const std::string& run : DigitRuns(haystack)) {
      for (size_t len = vault::kMinPanDigits;
           len <= vault::kMaxPanDigits && len <= run.size(); ++len) {
        for (size_t at = 0; at + len <= run.size(); ++at) {
          auto it = by_pan_.find(absl::string_view(run).substr(at, len));
          if (it != by_pan_.end()) found.insert(it->second);
        }
      }
    }
    return found;
  }

  const std::vector<Sending>& sendings() const { return sendings_; }

 private:
  std::vector<std::string> pool_;
  std::vector<Sending> sendings_;
  absl::flat_hash_map<std::string, size_t> by_pan_;
};

// Visits every string and bytes field of `message` and its nested messages,
// with its path ("requests[1].card.pan"); empty repeated fields get two
// elements first, so that per-item handling is reached.
using LeafVisitor =
    std::function<void(pb::Message* message, const pb::FieldDescriptor* field,
                       int index, const std::string& path)>;

void ForEachStringLeaf(pb::Message* message, const std::string& prefix,
                       int depth, const LeafVisitor& visit) {
  const pb::Descriptor* descriptor = message->GetDescriptor();
  const pb::Reflection* reflection = message->GetReflection();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const pb::FieldDescriptor* field = descriptor->field(i);
    const std::string path = prefix.empty()
                                 ? field->name()
                                 : absl::StrCat(prefix, ".", field->name());
    const bool is_string = field->type() == pb::FieldDescriptor::TYPE_STRING ||
                           field->type() == pb::FieldDescriptor::TYPE_BYTES;
    const bool is_message =
        field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE;
    if (!is_string && !(is_message && depth < kMaxDepth)) continue;
    if (!field->is_repeated()) {
      if (is_string) {
        visit(message, field, -1, path);
      } else {
        ForEachStringLeaf(reflection->MutableMessage(message, field), path,
                          depth + 1, visit);
      }
      continue;
    }
    while (reflection->FieldSize(*message, field) < 2) {
      if (is_string) {
        reflection->AddString(message, field, "");
      } else {
        reflection->AddMessage(message, field);
      }
    }
    for (int j = 0; j < reflection->FieldSize(*message, field); ++j) {
      const std::string item = absl::StrCat(path, "[", j, "]");
      if (is_string) {
        visit(message, field, j, item);
      } else {
        ForEachStringLeaf(reflection->MutableRepeatedMessage(message, field, j),
                          item, depth + 1, visit);
      }
    }
  }
}

void SetString(pb::Message* message, const pb::FieldDescriptor* field,
               int index, std::string value) {
  if (index < 0) {
    message->GetReflection()->SetString(message, field, std::move(value));
  } else {
    message->GetReflection()->SetRepeatedString(message, field, index,
                                                std::move(value));
  }
}

std::vector<std::string> StringLeafPaths(pb::Message* message) {
  std::vector<std::string> paths;
  ForEachStringLeaf(message, "", 0,
                    [&](pb::Message*, const pb::FieldDescriptor*, int,
                        const std::string& path) { paths.push_back(path); });
  return paths;
}

// grpc.health.v1 as the gRPC repository defines it: Debian's packages ship
// neither its generated code nor health.proto, so it is declared here
// (status as int32, wire-compatible with its enum).
const pb::ServiceDescriptor* HealthService() {
  if (const pb::ServiceDescriptor* s =
          pb::DescriptorPool::generated_pool()->FindServiceByName(
              "grpc.health.v1.Health")) {
    return s;
  }
  static auto* pool = new pb::DescriptorPool();
  pb::FileDescriptorProto file;
  const bool parsed = pb::TextFormat::ParseFromString(
      R"pb(
        name: "grpc/health/v1/health.proto"
        package: "grpc.health.v1"
        syntax: "proto3"
        message_type {
          name: "HealthCheckRequest"
          field {
            name: "service"
            number: 1
            label: LABEL_OPTIONAL
            type: TYPE_STRING
          }
        }
        message_type {
          name: "HealthCheckResponse"
          field {
            name: "status"
            number: 1
            label: LABEL_OPTIONAL
            type: TYPE_INT32
          }
        }
        service {
          name: "Health"
          method {
            name: "Check"
            input_type: ".grpc.health.v1.HealthCheckRequest"
            output_type: ".grpc.health.v1.HealthCheckResponse"
          }
          method {
            name: "Watch"
            input_type: ".grpc.health.v1.HealthCheckRequest"
            output_type: ".grpc.health.v1.HealthCheckResponse"
            server_streaming: true
          }
        }
      )pb",
      &file);
  if (!parsed) std::abort();
  return pool->BuildFile(file)->FindServiceByName("Health");
}

// Every service of the API's proto files, and health.
std::vector<const pb::ServiceDescriptor*> ExposedServices() {
  // Links the generated descriptors in even if nothing else named them.
  (void)v1::TokenVault::service_full_name();
  (void)v1::AuditLog::service_full_name();
  (void)v1::KeyAdmin::service_full_name();
  std::vector<const pb::ServiceDescriptor*> services;
  for (const char* file :
       {"cardvault/v1/vault.proto", "cardvault/v1/audit.proto",
        "cardvault/v1/key_admin.proto"}) {
    const pb::FileDescriptor* f =
        pb::DescriptorPool::generated_pool()->FindFileByName(file);
    if (f == nullptr) std::abort();
    for (int i = 0; i < f->service_count(); ++i) {
      services.push_back(f->service(i));
    }
  }
  services.push_back(HealthService());
  return services;
}

// "TokenVault.Tokenize" for /cardvault.v1.TokenVault/Tokenize.
std::string MethodLabel(const pb::MethodDescriptor* method) {
  return absl::StrCat(method->service()->name(), ".", method->name());
}

class LeakSweepTest : public ::testing::Test {
 protected:
  struct Caller {
    std::string name;   // pki/NAME.crt
    std::string label;  // for reports
    std::unique_ptr<grpc::GenericStub> stub;
  };

  // A valid request of `method` as `caller`, built afresh for each call.
  struct Template {
    std::string method;  // full name, e.g. "cardvault.v1.TokenVault.Tokenize"
    std::string caller;
    std::function<std::unique_ptr<pb::Message>()> build;
    std::string kind = "";  // which valid request, when a method has several
    // What the request as built gets: valid data is seen to be valid.
    grpc::StatusCode expected = grpc::StatusCode::OK;
  };

  void SetUp() override {
    env_ = testing::TestEnv::Create();
    env_->IssueClient("stranger", testing::TestEnv::Identity("stranger"));
    // Identities that are themselves PANs: recorded identities must be
    // validated against the policy, or masked.
    const std::string san_suffix =
        ledger_.Take("certificate URI SAN", "spiffe://cardvault.test/svc-PAN");
    env_->IssueClient("svc-pan-san",
                      testing::TestEnv::Identity("svc-" + san_suffix));
    const std::string san_path =
        ledger_.Take("certificate URI SAN", "spiffe://cardvault.test/PAN");
    env_->IssueClient("pan-san", testing::TestEnv::Identity(san_path));
    pan_cn_ = ledger_.Take("certificate CN (no URI SAN)", "CN=PAN");
    env_->IssueClient(pan_cn_, "-");
    log_ = env_->dir() + "/server.log";
    auto server = testing::ServerProcess::Start(env_->config_path(), log_);
    ASSERT_THAT(server, IsOk());
    server_ = *std::move(server);
    for (const auto& [name, label] :
         std::vector<std::pair<std::string, std::string>>{
             {"pos", "pos (tokenizer)"},
             {"processor", "processor (detokenizer)"},
             {"auditor", "auditor"},
             {"admin", "admin"},
             {"stranger", "stranger (not in the policy)"},
             {"svc-pan-san", "URI SAN .../svc-PAN"},
             {"pan-san", "URI SAN .../PAN"},
             {pan_cn_, "CN=PAN"}}) {
      auto channel = client::CreateMutualTlsChannel(
          testing::ClientOptionsFor(*env_, server_->address(), name));
      ASSERT_THAT(channel, IsOk());
      callers_.push_back(
          {name, label, std::make_unique<grpc::GenericStub>(*channel)});
    }
  }

  std::unique_ptr<client::VaultClient> Client(absl::string_view name) {
    return testing::ClientFor(*env_, server_->address(), name);
  }

  const Caller& CallerNamed(const std::string& name) {
    for (const Caller& c : callers_) {
      if (c.name == name) return c;
    }
    std::abort();
  }

  // A card whose PAN is a fresh ledger entry, for `field` of a valid call.
  v1::Card FreshCard(absl::string_view field, absl::string_view how) {
    v1::Card card;
    card.set_pan(ledger_.Take(field, how));
    card.set_exp_month(12);
    card.set_exp_year(2035);
    card.set_cardholder_name("A CARDHOLDER");
    return card;
  }

  // A Tokenize request pos may make; its PAN is recorded as sent in `field`.
  v1::TokenizeRequest ValidTokenize(absl::string_view field,
                                    bool bin_last_four) {
    v1::TokenizeRequest r;
    *r.mutable_card() = FreshCard(field, "valid request, as pos");
    r.set_idempotency_key(absl::StrCat("idem-", ++idempotency_keys_));
    r.set_cvv("123");
    if (bin_last_four) {
      r.set_domain("dev-merchant/ecommerce");
      r.set_format(v1::BIN_LAST_FOUR);
      r.set_deterministic(true);
      r.mutable_ttl()->set_seconds(3600);
    } else {
      r.set_domain("dev-merchant/pos");
    }
    return r;
  }

  // Tokenizes a fresh card as pos (its PAN recorded as `why`).
  std::string SetUpToken(absl::string_view why, absl::string_view domain) {
    v1::TokenizeRequest r;
    *r.mutable_card() = FreshCard(why, "valid request, as pos");
    r.set_domain(std::string(domain));
    auto response = Client("pos")->Tokenize(r);
    EXPECT_THAT(response, IsOk());
    return response.ok() ? response->token() : "";
  }

  // Valid requests, for sending a PAN in one field next to valid data.
  std::vector<Template> Templates() {
    constexpr char kSetUp[] = "TokenVault.Tokenize card.pan of a set-up token";
    const std::string token = SetUpToken(kSetUp, "dev-merchant/pos");
    const std::string token2 = SetUpToken(kSetUp, "dev-merchant/ecommerce");
    control_token_ = token;
    auto head = Client("auditor")->VerifyAuditChain();
    EXPECT_THAT(head, IsOk());
    const v1::Checkpoint checkpoint =
        head.ok() ? head->head() : v1::Checkpoint();
    v1::ProposeOperationRequest proposal;
    proposal.set_kind(v1::REENCRYPT_ALL);
    proposal.set_reason("quarterly re-encryption");
    auto operation = Client("admin")->ProposeOperation(proposal);
    EXPECT_THAT(operation, IsOk());
    const std::string operation_id = operation.ok() ? operation->id() : "";
    const auto box = [](auto message) -> std::unique_ptr<pb::Message> {
      return std::make_unique<decltype(message)>(std::move(message));
    };
    std::vector<Template> out;
    for (bool bin_last_four : {false, true}) {
      out.push_back({"cardvault.v1.TokenVault.Tokenize", "pos",
                     [=, this] {
                       return box(ValidTokenize(
                           "TokenVault.Tokenize card.pan of a valid request",
                           bin_last_four));
                     },
                     bin_last_four ? " (deterministic, BIN_LAST_FOUR, TTL)"
                                   : " (RANDOM)"});
    }
    out.push_back({"cardvault.v1.TokenVault.TokenizeBatch", "pos", [=, this] {
                     v1::TokenizeBatchRequest r;
                     for (bool bin_last_four : {false, true}) {
                       *r.add_requests() = ValidTokenize(
                           "TokenVault.TokenizeBatch card.pan of a valid item",
                           bin_last_four);
                     }
                     return box(r);
                   }});
    out.push_back({"cardvault.v1.TokenVault.Detokenize", "processor", [=] {
                     v1::DetokenizeRequest r;
                     r.set_token(token);
                     r.set_purpose("authorization");
                     return box(r);
                   }});
    out.push_back({"cardvault.v1.TokenVault.DetokenizeBatch", "processor", [=] {
                     v1::DetokenizeBatchRequest r;
                     auto* a = r.add_requests();
                     a->set_token(token);
                     a->set_purpose("authorization");
                     auto* b = r.add_requests();
                     b->set_token(token2);
                     b->set_purpose("refund");
                     return box(r);
                   }});
    for (const char* caller : {"pos", "auditor"}) {
      out.push_back({"cardvault.v1.TokenVault.GetTokenInfo", caller, [=] {
                       v1::GetTokenInfoRequest r;
                       r.set_token(token);
                       return box(r);
                     }});
    }
    out.push_back({"cardvault.v1.TokenVault.DeleteToken", "pos", [=, this] {
                     v1::DeleteTokenRequest r;
                     r.set_token(SetUpToken(
                         "TokenVault.Tokenize card.pan of a token to delete",
                         "dev-merchant/pos"));
                     return box(r);
                   }});
    out.push_back({"cardvault.v1.AuditLog.ListEvents", "auditor", [=] {
                     v1::ListEventsRequest r;
                     r.set_identity(testing::TestEnv::Identity("pos"));
                     r.set_token(token);
                     r.set_max_events(3);
                     return box(r);
                   }});
    out.push_back({"cardvault.v1.AuditLog.VerifyChain", "auditor", [=] {
                     v1::VerifyChainRequest r;
                     *r.mutable_expected_checkpoint() = checkpoint;
                     return box(r);
                   }});
    out.push_back({"cardvault.v1.KeyAdmin.ProposeOperation", "admin",
                   [=] { return box(proposal); }});
    // A real pending operation, which its own proposer may not approve.
    out.push_back({"cardvault.v1.KeyAdmin.ApproveOperation", "admin",
                   [=] {
                     v1::ApproveOperationRequest r;
                     r.set_operation_id(operation_id);
                     return box(r);
                   },
                   "", grpc::StatusCode::FAILED_PRECONDITION});
    return out;
  }

  void Send(const Caller& caller, const pb::MethodDescriptor* method,
            const pb::Message& request, grpc::Status* out = nullptr) {
    const grpc::Status status = testing::CallGeneric(
        caller.stub.get(),
        absl::StrCat("/", method->service()->full_name(), "/", method->name()),
        request.SerializeAsString(),
        method->full_name() == "grpc.health.v1.Health.Watch");
    ++calls_;
    ++outcomes_[MethodLabel(method)][status.error_code()];
    if (out != nullptr) *out = status;
    // A server that died would make every later sweep vacuous.
    ASSERT_NE(status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << MethodLabel(method) << " as " << caller.label << ": "
        << status.error_message();
  }

  // Every method as every caller in every spelling, every string field a
  // distinct PAN.
  void SendEverywhere(
      const std::vector<const pb::ServiceDescriptor*>& services) {
    pb::DynamicMessageFactory factory;
    for (const pb::ServiceDescriptor* service : services) {
      for (int m = 0; m < service->method_count(); ++m) {
        const pb::MethodDescriptor* method = service->method(m);
        const pb::Message* prototype =
            factory.GetPrototype(method->input_type());
        std::unique_ptr<pb::Message> probe(prototype->New());
        const bool has_strings = !StringLeafPaths(probe.get()).empty();
        ASSERT_EQ(method->input_type()->FindFieldByNumber(kUnknownFieldNumber),
                  nullptr);
        // (spelling, with an unknown field); requests without string fields
        // differ only by the unknown field.
        std::vector<std::pair<const Spelling*, bool>> variants;
        for (const Spelling& s : kSpellings) {
          if (has_strings || variants.empty()) variants.emplace_back(&s, false);
        }
        variants.emplace_back(&kSpellings[0], true);
        for (const Caller& caller : callers_) {
          for (const auto& [spelling_ptr, unknown_field] : variants) {
            const Spelling& spelling = *spelling_ptr;
            const std::string how = absl::StrCat(
                unknown_field ? kUnknownFieldVariant : spelling.name, ", as ",
                caller.label);
            std::unique_ptr<pb::Message> request(prototype->New());
            ForEachStringLeaf(
                request.get(), "", 0,
                [&](pb::Message* msg, const pb::FieldDescriptor* field,
                    int index, const std::string& path) {
                  const std::string pan = ledger_.Take(
                      absl::StrCat(MethodLabel(method), " ", path), how);
                  SetString(msg, field, index,
                            spelling.spell(pan, MaxBytes(field)));
                });
            if (unknown_field) {
              request->GetReflection()
                  ->MutableUnknownFields(request.get())
                  ->AddLengthDelimited(
                      kUnknownFieldNumber,
                      ledger_.Take(
                          absl::StrCat(MethodLabel(method), " <unknown field ",
                                       kUnknownFieldNumber, ">"),
                          how));
            }
            Send(caller, method, *request);
            if (HasFatalFailure()) return;
          }
        }
      }
    }
  }

  // Each valid request with one string field at a time replaced by a PAN.
  void SendNextToValidData() {
    for (const Template& t : Templates()) {
      const pb::MethodDescriptor* method =
          pb::DescriptorPool::generated_pool()->FindMethodByName(t.method);
      ASSERT_NE(method, nullptr) << t.method;
      const Caller& caller = CallerNamed(t.caller);
      std::unique_ptr<pb::Message> probe = t.build();
      grpc::Status status;
      Send(caller, method, *probe, &status);
      if (HasFatalFailure()) return;
      EXPECT_EQ(status.error_code(), t.expected)
          << t.method << t.kind << ": " << status.error_message();
      for (const std::string& target : StringLeafPaths(probe.get())) {
        for (const Spelling& spelling : kSpellings) {
          std::unique_ptr<pb::Message> request = t.build();
          ForEachStringLeaf(
              request.get(), "", 0,
              [&](pb::Message* msg, const pb::FieldDescriptor* field, int index,
                  const std::string& path) {
                if (path != target) return;
                const std::string pan = ledger_.Take(
                    absl::StrCat(MethodLabel(method), " ", path,
                                 ", rest of a valid request", t.kind),
                    absl::StrCat(spelling.name, ", as ", caller.label));
                SetString(msg, field, index,
                          spelling.spell(pan, MaxBytes(field)));
              });
          Send(caller, method, *request);
          if (HasFatalFailure()) return;
        }
      }
    }
  }

  // Records where each PAN of `haystack` was found (except those in
  // `skip`): `where` is the sweep ("RocksDB"), `detail` the spot in it
  // ("CF audit value"). Returns the PANs found.
  std::set<size_t> Sweep(absl::string_view haystack, absl::string_view where,
                         absl::string_view detail,
                         const std::set<size_t>& skip = {}) {
    std::set<size_t> found = ledger_.FoundIn(haystack);
    for (size_t i : found) {
      if (skip.contains(i)) continue;
      Places& places = found_[i];
      auto it = std::find_if(places.begin(), places.end(),
                             [&](const auto& p) { return p.first == where; });
      if (it == places.end()) {
        places.emplace_back(std::string(where), std::vector<std::string>());
        it = places.end() - 1;
      }
      if (std::find(it->second.begin(), it->second.end(), detail) ==
          it->second.end()) {
        it->second.emplace_back(detail);
      }
    }
    ++haystacks_;
    return found;
  }

  // Every string field of `message` by path, then its serialization and
  // text form for what no declared field holds (unknown fields).
  void SweepMessage(const pb::Message& message, absl::string_view where,
                    const std::string& place) {
    std::set<size_t> in_fields;
    ForEachStringLeafPresent(message, "", where, place, &in_fields);
    Sweep(message.SerializeAsString(), where,
          absl::StrCat(place, " (serialized)"), in_fields);
    Sweep(message.DebugString(), where, absl::StrCat(place, " (text form)"),
          in_fields);
  }

  void ForEachStringLeafPresent(const pb::Message& message,
                                const std::string& prefix,
                                absl::string_view where,
                                const std::string& place,
                                std::set<size_t>* found) {
    const pb::Reflection* r = message.GetReflection();
    std::vector<const pb::FieldDescriptor*> fields;
    r->ListFields(message, &fields);
    for (const pb::FieldDescriptor* f : fields) {
      const std::string path =
          prefix.empty() ? f->name() : absl::StrCat(prefix, ".", f->name());
      const int n = f->is_repeated() ? r->FieldSize(message, f) : 1;
      for (int j = 0; j < n; ++j) {
        const std::string item =
            f->is_repeated() ? absl::StrCat(path, "[", j, "]") : path;
        if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING) {
          found->merge(Sweep(f->is_repeated()
                                 ? r->GetRepeatedString(message, f, j)
                                 : r->GetString(message, f),
                             where, absl::StrCat(place, ".", item)));
        } else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
          ForEachStringLeafPresent(f->is_repeated()
                                       ? r->GetRepeatedMessage(message, f, j)
                                       : r->GetMessage(message, f),
                                   item, where, place, found);
        }
      }
    }
  }

  // (a) The trail as an auditor reads it.
  void SweepAuditTrail() {
    std::vector<v1::AuditEvent> events;
    ASSERT_THAT(Client("auditor")->ListAuditEvents(
                    v1::ListEventsRequest(),
                    [&](const v1::AuditEvent& e) { events.push_back(e); }),
                IsOk());
    bool control_seen = false;
    for (const v1::AuditEvent& e : events) {
      SweepMessage(e, "audit trail via ListEvents",
                   e.rpc().empty() ? v1::EventType_Name(e.event_type())
                                   : std::string(absl::StripPrefix(
                                         e.rpc(), "/cardvault.v1.")));
      control_seen |= absl::StrContains(e.SerializeAsString(), control_token_);
    }
    audit_events_ = events.size();
    // The sweep sees what the trail records (else it proves nothing).
    EXPECT_TRUE(control_seen)
        << "token " << control_token_ << " not in any audit event";
  }

  // (b) Every key and value of every column family, below the vault's
  // reader and through compression; older versions and tombstones too.
  void SweepRocksDb() {
    const std::string dir = env_->data_dir();
    std::vector<std::string> names;
    ASSERT_TRUE(
        rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), dir, &names)
            .ok());
    rocksdb::DBOptions db_options;
    std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
    rocksdb::ConfigOptions config;
    config.ignore_unknown_options = true;
    rocksdb::Status loaded =
        rocksdb::LoadLatestOptions(config, dir, &db_options, &descriptors);
    ASSERT_TRUE(loaded.ok()) << loaded.ToString();
    std::set<std::string> described;
    for (const auto& d : descriptors) described.insert(d.name);
    ASSERT_EQ(described, std::set<std::string>(names.begin(), names.end()));
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    rocksdb::Status opened = rocksdb::DB::OpenForReadOnly(
        db_options, dir, descriptors, &handles, &raw);
    ASSERT_TRUE(opened.ok()) << opened.ToString();
    std::unique_ptr<rocksdb::DB> db(raw);
    std::map<std::string, bool> control_seen;
    for (rocksdb::ColumnFamilyHandle* h : handles) {
      const std::string cf = absl::StrCat("CF ", h->GetName());
      std::set<std::pair<std::string, std::string>> current;
      std::unique_ptr<rocksdb::Iterator> it(
          db->NewIterator(rocksdb::ReadOptions(), h));
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        const std::string key = it->key().ToString();
        const std::string value = it->value().ToString();
        Sweep(key, "RocksDB", absl::StrCat(cf, " key"));
        Sweep(value, "RocksDB", absl::StrCat(cf, " value"));
        control_seen[h->GetName()] |= absl::StrContains(key, control_token_) ||
                                      absl::StrContains(value, control_token_);
        current.emplace(key, value);
        ++rocksdb_entries_;
      }
      EXPECT_TRUE(it->status().ok()) << cf << ": " << it->status().ToString();
      // What the iterator no longer shows but the files still hold:
      // overwritten values, deleted entries, merge operands.
      std::vector<rocksdb::KeyVersion> versions;
      rocksdb::Status all = rocksdb::GetAllKeyVersions(
          db.get(), h, rocksdb::Slice(), rocksdb::Slice(),
          std::numeric_limits<size_t>::max(), &versions);
      EXPECT_TRUE(all.ok()) << cf << ": " << all.ToString();
      for (const rocksdb::KeyVersion& v : versions) {
        if (current.contains({v.user_key, v.value})) continue;
        Sweep(v.user_key, "RocksDB", absl::StrCat(cf, " key (older version)"));
        Sweep(v.value, "RocksDB", absl::StrCat(cf, " value (older version)"));
      }
    }
    // The audit CF is LZ4/ZSTD on disk: seeing the token there shows the
    // sweep reads through the compression.
    EXPECT_TRUE(control_seen["audit"]) << "token not seen in CF audit";
    EXPECT_TRUE(control_seen["tokens"]) << "token not seen in CF tokens";
    for (rocksdb::ColumnFamilyHandle* h : handles) {
      db->DestroyColumnFamilyHandle(h);
    }
  }

  // (c) Raw bytes of every file the server wrote: data dir (SSTs, WAL,
  // MANIFEST, LOG), metrics and the HSM token. The PKI and CA are the
  // test's own (they hold the PAN identities legitimately); the log has its
  // own sweep.
  void SweepFiles() {
    bool control_seen = false;
    for (const auto& [path, bytes] : testing::ReadTree(env_->dir())) {
      const std::string relative(absl::StripPrefix(path, env_->dir() + "/"));
      if (absl::StartsWith(relative, "pki/") ||
          absl::StartsWith(relative, "ca/") || path == log_) {
        continue;
      }
      Sweep(bytes, "raw file", relative);
      control_seen |= absl::StartsWith(relative, "data/") &&
                      absl::StrContains(bytes, control_token_);
      ++files_;
    }
    EXPECT_TRUE(control_seen) << "token not in any raw file of the data dir";
  }

  // (d) The server's log, line by line so that a report names the line.
  void SweepLog() {
    const std::string log = testing::ReadFileOrEmpty(log_);
    EXPECT_THAT(log, ::testing::HasSubstr("cardvaultd"));
    for (absl::string_view line : absl::StrSplit(log, '\n')) {
      // Without its timestamp, so that repeated lines are reported once.
      const absl::string_view message =
          line.substr(std::min(line.size(), line.find(' ') + 1), 160);
      Sweep(line, "server log",
            absl::StrCat("\"", absl::CHexEscape(message), "\""));
    }
  }

  // One failure per field that leaked, listing each leaking sending.
  void Report() {
    std::map<std::string, std::vector<size_t>> leaked_by_field;
    std::map<std::string, int> sent_by_field;
    std::vector<std::string> order;
    for (size_t i = 0; i < ledger_.sendings().size(); ++i) {
      const auto& s = ledger_.sendings()[i];
      if (sent_by_field[s.field]++ == 0) order.push_back(s.field);
      if (found_.contains(i)) leaked_by_field[s.field].push_back(i);
    }
    size_t leaked = 0;
    for (const std::string& field : order) {
      auto it = leaked_by_field.find(field);
      if (it == leaked_by_field.end()) continue;
      std::string lines;
      for (size_t i : it->second) {
        const auto& s = ledger_.sendings()[i];
        absl::StrAppend(&lines, "\n  ", s.how, " [", s.pan, "] found in");
        for (const auto& [where, details] : found_[i]) {
          // A few spots are enough to find the leak; all would be noise.
          constexpr size_t kShown = 3;
          absl::StrAppend(
              &lines, "\n    ", where, ": ",
              absl::StrJoin(details.begin(),
                            details.begin() + std::min(kShown, details.size()),
                            "; "),
              details.size() > kShown
                  ? absl::StrCat(" (and ", details.size() - kShown, " more)")
                  : "");
        }
      }
      leaked += it->second.size();
      ADD_FAILURE() << "PAN sent in " << field << " leaked ("
                    << it->second.size() << " of " << sent_by_field[field]
                    << " sendings):" << lines;
    }
    std::cout << "leak sweep: " << ledger_.sendings().size() << " PANs in "
              << calls_ << " calls, " << leaked << " leaked; swept "
              << audit_events_ << " audit events, " << rocksdb_entries_
              << " RocksDB entries, " << files_ << " files (" << haystacks_
              << " haystacks)\n";
    for (const auto& [method, codes] : outcomes_) {
      std::cout << "  " << method << ":";
      for (const auto& [code, n] : codes) {
        std::cout << " "
                  << absl::StatusCodeToString(
                         static_cast<absl::StatusCode>(code))
                  << " x" << n;
      }
      std::cout << "\n";
    }
  }

  PanLedger ledger_;
  std::unique_ptr<testing::TestEnv> env_;
  std::unique_ptr<testing::ServerProcess> server_;
  std::string log_;
  std::string pan_cn_;
  std::vector<Caller> callers_;
  std::string control_token_;
  int idempotency_keys_ = 0;
  int calls_ = 0;
  // Status codes per method: which checks the PANs got past.
  std::map<std::string, std::map<int, int>> outcomes_;
  size_t audit_events_ = 0;
  size_t rocksdb_entries_ = 0;
  size_t files_ = 0;
  size_t haystacks_ = 0;
  // Per sending: the sweeps that found its PAN and where in them.
  using Places = std::vector<std::pair<std::string, std::vector<std::string>>>;
  std::map<size_t, Places> found_;
};

TEST(DigitRunsTest, SeesEverySpellingTheSweepSends) {
  PanLedger ledger;
  for (const Spelling& s : kSpellings) {
    const std::string pan = ledger.Take("f", s.name);
    EXPECT_EQ(ledger.FoundIn(absl::StrCat("<", s.spell(pan, 64), ">")).size(),
              1u)
        << s.name;
  }
  const std::string pan = ledger.Take("f", "hex");
  EXPECT_EQ(ledger.FoundIn(absl::BytesToHexString(pan)).size(), 1u);
  EXPECT_TRUE(ledger.FoundIn("4111 1111 1111 1111 and 1234-5678").empty());
}

TEST_F(LeakSweepTest, NoPanSentInAnyFieldReachesTheTrailTheStoreOrTheLog) {
  const absl::Time start = absl::Now();
  const std::vector<const pb::ServiceDescriptor*> services = ExposedServices();
  ASSERT_EQ(services.size(), 4u);
  ASSERT_NO_FATAL_FAILURE(SendNextToValidData());
  ASSERT_NO_FATAL_FAILURE(SendEverywhere(services));
  ASSERT_NO_FATAL_FAILURE(SweepAuditTrail());
  ASSERT_EQ(WEXITSTATUS(server_->Terminate()), 0);
  ASSERT_NO_FATAL_FAILURE(SweepRocksDb());
  ASSERT_NO_FATAL_FAILURE(SweepFiles());
  ASSERT_NO_FATAL_FAILURE(SweepLog());
  Report();
  std::cout << "leak sweep took " << absl::Now() - start << "\n";
}

}  // namespace
}  // namespace cardvault
