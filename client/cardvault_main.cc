// cardvault: command-line client.
//
//   echo 4111111111111111 | cardvault tokenize [--exp_month=12 --exp_year=2030]
//       [--format=last_four --deterministic --ttl=24h --idempotency_key=K]
//   printf '4111111111111111\n737\n' | cardvault tokenize --cvv_from_stdin
//   cardvault detokenize --purpose=authorization tok_...
//   cardvault info tok_...
//   cardvault delete tok_...
//   cardvault audit list [--identity=I --event_type=DETOKENIZE --token=T
//                         --since=RFC3339 --until=RFC3339 --max_events=N]
//   cardvault audit verify
//   cardvault keys list|operations|rotate
//   cardvault keys propose --kind=destroy_data_key|reencrypt_all|rotate_kek
//       [--key_version=N] --reason=TEXT
//   cardvault keys approve OPERATION_ID
//   cardvault backup create|list
//   cardvault backup verify [--all_records] ID
//   cardvault backup delete ID
//   cardvault health
//
// The PAN (and a CVV) is read from stdin, never from argv (argv is visible to
// every user in /proc). Certificate flags default to the dev PKI: pos for
// tokenize, info and delete, processor for detokenize, auditor for audit,
// admin for keys and backup, watchdog (no role) for health. Audit
// events are printed as JSON lines, ready for a SIEM.
#include <algorithm>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/health_check.h"
#include "client/vault_client.h"
#include "google/protobuf/util/json_util.h"

ABSL_FLAG(std::string, address, "127.0.0.1:9443", "cardvaultd host:port.");
ABSL_FLAG(std::string, pki_dir, "var/dev/pki",
          "Directory of the dev PKI used for defaults.");
ABSL_FLAG(std::string, ca, "", "CA bundle (default: <pki_dir>/ca.crt).");
ABSL_FLAG(std::string, cert, "",
          "Client certificate (default: <pki_dir>/pos.crt for tokenize, "
          "<pki_dir>/processor.crt for detokenize).");
ABSL_FLAG(std::string, key, "", "Client key (default: matches --cert).");
ABSL_FLAG(uint32_t, exp_month, 0, "Expiry month (tokenize).");
ABSL_FLAG(uint32_t, exp_year, 0, "Expiry year (tokenize).");
ABSL_FLAG(std::string, name, "", "Cardholder name (tokenize).");
ABSL_FLAG(std::string, domain, "",
          "Token domain (tokenize; default: the caller's default domain).");
ABSL_FLAG(std::string, format, "random",
          "Token format (tokenize): random, last_four or bin_last_four.");
ABSL_FLAG(bool, deterministic, false,
          "Return the existing token of this PAN in the domain (tokenize).");
ABSL_FLAG(absl::Duration, ttl, absl::ZeroDuration(),
          "Token lifetime, e.g. 24h (tokenize; default none or the domain's "
          "maximum).");
ABSL_FLAG(std::string, idempotency_key, "",
          "A retry with the same key returns the first result (tokenize).");
ABSL_FLAG(bool, cvv_from_stdin, false,
          "Read a CVV from the second line of stdin (tokenize); it is held "
          "in server memory only and returned by the first detokenize.");
ABSL_FLAG(std::string, purpose, "",
          "Why the card is needed (detokenize, required): one of the "
          "server policy's purposes, e.g. authorization, refund, chargeback.");
ABSL_FLAG(int, deadline_ms, 5000, "Deadline of the call in milliseconds.");
ABSL_FLAG(std::string, identity, "", "audit list: only this caller identity.");
ABSL_FLAG(std::string, event_type, "",
          "audit list: only this event type (e.g. DETOKENIZE).");
ABSL_FLAG(std::string, token, "", "audit list: only events about this token.");
ABSL_FLAG(std::string, since, "", "audit list: from this RFC 3339 time.");
ABSL_FLAG(std::string, until, "", "audit list: before this RFC 3339 time.");
ABSL_FLAG(uint32_t, max_events, 0, "audit list: at most this many events.");
ABSL_FLAG(std::string, kind, "",
          "keys propose: destroy_data_key, reencrypt_all, rotate_kek or "
          "destroy_kek.");
ABSL_FLAG(uint32_t, key_version, 0,
          "keys propose: the data key version (destroy_data_key) or the "
          "retained KEK's generation (destroy_kek).");
ABSL_FLAG(std::string, reason, "", "keys propose: why, for the audit trail.");
ABSL_FLAG(bool, all_records, false,
          "backup verify: open every card record instead of a sample.");
ABSL_FLAG(std::string, checkpoint, "",
          "audit verify: a checkpoint \"SEQUENCE:MAC_HEX\" (as the server "
          "logs it) that the chain must still hold.");

namespace {

int Fail(const absl::Status& status) {
  std::cerr << "cardvault: " << status << "\n";
  return 1;
}

cardvault::client::ClientOptions Options(const std::string& identity) {
  const std::string dir = absl::GetFlag(FLAGS_pki_dir);
  cardvault::client::ClientOptions o;
  o.address = absl::GetFlag(FLAGS_address);
  o.ca_file = absl::GetFlag(FLAGS_ca).empty() ? dir + "/ca.crt"
                                              : absl::GetFlag(FLAGS_ca);
  o.cert_file = absl::GetFlag(FLAGS_cert).empty()
                    ? dir + "/" + identity + ".crt"
                    : absl::GetFlag(FLAGS_cert);
  o.key_file = absl::GetFlag(FLAGS_key).empty() ? dir + "/" + identity + ".key"
                                                : absl::GetFlag(FLAGS_key);
  o.deadline = absl::Milliseconds(absl::GetFlag(FLAGS_deadline_ms));
  return o;
}

std::string Json(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

absl::Status SetTime(const std::string& rfc3339,
                     google::protobuf::Timestamp* out) {
  absl::Time t;
  std::string error;
  if (!absl::ParseTime(absl::RFC3339_full, rfc3339, &t, &error)) {
    return absl::InvalidArgumentError("bad time (want RFC 3339): " + error);
  }
  out->set_seconds(absl::ToUnixSeconds(t));
  return absl::OkStatus();
}

absl::StatusOr<cardvault::v1::TokenFormat> ParseFormat(
    const std::string& name) {
  if (name == "random") return cardvault::v1::RANDOM;
  if (name == "last_four") return cardvault::v1::LAST_FOUR;
  if (name == "bin_last_four") return cardvault::v1::BIN_LAST_FOUR;
  return absl::InvalidArgumentError(
      "--format must be random, last_four or bin_last_four");
}

// Reads one line of stdin without its line ending; the server judges the
// rest.
std::string ReadLine() {
  std::string line;
  std::getline(std::cin, line);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

int Tokenize() {
  cardvault::v1::TokenizeRequest request;
  cardvault::v1::Card& card = *request.mutable_card();
  card.set_pan(ReadLine());
  if (absl::GetFlag(FLAGS_cvv_from_stdin)) request.set_cvv(ReadLine());
  card.set_exp_month(absl::GetFlag(FLAGS_exp_month));
  card.set_exp_year(absl::GetFlag(FLAGS_exp_year));
  card.set_cardholder_name(absl::GetFlag(FLAGS_name));
  request.set_domain(absl::GetFlag(FLAGS_domain));
  auto format = ParseFormat(absl::GetFlag(FLAGS_format));
  if (!format.ok()) return Fail(format.status());
  request.set_format(*format);
  request.set_deterministic(absl::GetFlag(FLAGS_deterministic));
  const absl::Duration ttl = absl::GetFlag(FLAGS_ttl);
  if (ttl != absl::ZeroDuration()) {
    request.mutable_ttl()->set_seconds(absl::ToInt64Seconds(ttl));
  }
  request.set_idempotency_key(absl::GetFlag(FLAGS_idempotency_key));
  auto client = cardvault::client::VaultClient::Create(Options("pos"));
  if (!client.ok()) return Fail(client.status());
  auto response = (*client)->Tokenize(request);
  if (!response.ok()) return Fail(response.status());
  std::cout << response->token() << "\n";
  if (!response->created()) std::cerr << "cardvault: existing token\n";
  return 0;
}

int Audit(const std::string& what) {
  auto client = cardvault::client::VaultClient::Create(Options("auditor"));
  if (!client.ok()) return Fail(client.status());
  if (what == "verify") {
    std::optional<cardvault::v1::Checkpoint> checkpoint;
    if (const std::string c = absl::GetFlag(FLAGS_checkpoint); !c.empty()) {
      std::vector<std::string> parts = absl::StrSplit(c, ':');
      uint64_t sequence = 0;
      if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &sequence)) {
        return Fail(absl::InvalidArgumentError("--checkpoint is SEQUENCE:MAC"));
      }
      checkpoint.emplace();
      checkpoint->set_sequence(sequence);
      checkpoint->set_mac(absl::HexStringToBytes(parts[1]));
    }
    auto report = (*client)->VerifyAuditChain(checkpoint);
    if (!report.ok()) return Fail(report.status());
    std::cout << Json(*report) << "\n";
    // The head in the form the server logs and --checkpoint takes.
    std::cerr << "checkpoint to export: " << report->head().sequence() << ":"
              << absl::BytesToHexString(report->head().mac()) << "\n";
    return report->intact() ? 0 : 3;
  }
  cardvault::v1::ListEventsRequest request;
  request.set_identity(absl::GetFlag(FLAGS_identity));
  request.set_token(absl::GetFlag(FLAGS_token));
  request.set_max_events(absl::GetFlag(FLAGS_max_events));
  if (!absl::GetFlag(FLAGS_event_type).empty()) {
    cardvault::v1::EventType type;
    if (!cardvault::v1::EventType_Parse(absl::GetFlag(FLAGS_event_type),
                                        &type)) {
      return Fail(absl::InvalidArgumentError("unknown --event_type"));
    }
    request.set_event_type(type);
  }
  if (!absl::GetFlag(FLAGS_since).empty()) {
    if (auto s =
            SetTime(absl::GetFlag(FLAGS_since), request.mutable_start_time());
        !s.ok()) {
      return Fail(s);
    }
  }
  if (!absl::GetFlag(FLAGS_until).empty()) {
    if (auto s =
            SetTime(absl::GetFlag(FLAGS_until), request.mutable_end_time());
        !s.ok()) {
      return Fail(s);
    }
  }
  absl::Status s = (*client)->ListAuditEvents(
      request, [](const cardvault::v1::AuditEvent& event) {
        std::cout << Json(event) << "\n";
      });
  return s.ok() ? 0 : Fail(s);
}

// Prints `message` (or the error) as one JSON line.
template <typename Message>
int PrintJson(const absl::StatusOr<Message>& message) {
  if (!message.ok()) return Fail(message.status());
  std::cout << Json(*message) << "\n";
  return 0;
}

int Keys(const std::vector<char*>& args) {
  auto client = cardvault::client::VaultClient::Create(Options("admin"));
  if (!client.ok()) return Fail(client.status());
  const std::string what = args[2];
  if (what == "list" && args.size() == 3)
    return PrintJson((*client)->ListKeys());
  if (what == "operations" && args.size() == 3) {
    return PrintJson((*client)->ListOperations());
  }
  if (what == "rotate" && args.size() == 3) {
    return PrintJson((*client)->RotateDataKey());
  }
  if (what == "approve" && args.size() == 4) {
    return PrintJson((*client)->ApproveOperation(args[3]));
  }
  if (what == "propose" && args.size() == 3) {
    cardvault::v1::ProposeOperationRequest request;
    const std::string kind = absl::GetFlag(FLAGS_kind);
    if (kind == "destroy_data_key") {
      request.set_kind(cardvault::v1::DESTROY_DATA_KEY);
    } else if (kind == "reencrypt_all") {
      request.set_kind(cardvault::v1::REENCRYPT_ALL);
    } else if (kind == "rotate_kek") {
      request.set_kind(cardvault::v1::ROTATE_KEK);
    } else if (kind == "destroy_kek") {
      request.set_kind(cardvault::v1::DESTROY_KEK);
    } else {
      return Fail(absl::InvalidArgumentError(
          "--kind must be destroy_data_key, reencrypt_all, rotate_kek or "
          "destroy_kek"));
    }
    request.set_key_version(absl::GetFlag(FLAGS_key_version));
    request.set_reason(absl::GetFlag(FLAGS_reason));
    return PrintJson((*client)->ProposeOperation(request));
  }
  std::cerr << absl::ProgramUsageMessage() << "\n";
  return 2;
}

int Backup(const std::vector<char*>& args) {
  // A backup or a full verification of millions of records takes minutes.
  cardvault::client::ClientOptions options = Options("admin");
  options.deadline = std::max(options.deadline, absl::Hours(1));
  auto client = cardvault::client::VaultClient::Create(options);
  if (!client.ok()) return Fail(client.status());
  const std::string what = args[2];
  if (what == "create" && args.size() == 3) {
    absl::StatusOr<cardvault::v1::Backup> b = (*client)->CreateBackup();
    if (!b.ok()) return Fail(b.status());
    std::cout << Json(*b) << "\n" << b->id() << "\n";
    return 0;
  }
  if (what == "list" && args.size() == 3) {
    return PrintJson((*client)->ListBackups());
  }
  uint32_t id = 0;
  if (args.size() == 4 && !absl::SimpleAtoi(args[3], &id)) {
    return Fail(absl::InvalidArgumentError("backup id must be a number"));
  }
  if (what == "verify" && args.size() == 4) {
    absl::StatusOr<cardvault::v1::BackupVerification> v =
        (*client)->VerifyBackup(id, absl::GetFlag(FLAGS_all_records));
    if (!v.ok()) return Fail(v.status());
    // Every field, "ok": false included, for an operator's alert.
    std::string out;
    google::protobuf::util::JsonPrintOptions options;
    options.preserve_proto_field_names = true;
    options.always_print_primitive_fields = true;
    (void)google::protobuf::util::MessageToJsonString(*v, &out, options);
    std::cout << out << "\n";
    return v->ok() ? 0 : 4;
  }
  if (what == "delete" && args.size() == 4) {
    if (absl::Status s = (*client)->DeleteBackup(id); !s.ok()) return Fail(s);
    return 0;
  }
  std::cerr << absl::ProgramUsageMessage() << "\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "cardvault tokenize [--exp_month=M --exp_year=Y --name=N --format=F "
      "--deterministic --ttl=D --idempotency_key=K --cvv_from_stdin] < pan\n"
      "       cardvault detokenize --purpose=P TOKEN\n"
      "       cardvault info TOKEN\n"
      "       cardvault delete TOKEN\n"
      "       cardvault audit list [--identity= --event_type= --token= "
      "--since= --until= --max_events=]\n"
      "       cardvault audit verify\n"
      "       cardvault keys list|operations|rotate\n"
      "       cardvault keys propose --kind=K [--key_version=N] --reason=R\n"
      "       cardvault keys approve OPERATION_ID\n"
      "       cardvault backup create|list\n"
      "       cardvault backup verify [--all_records] ID\n"
      "       cardvault backup delete ID\n"
      "       cardvault health");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    std::cerr << absl::ProgramUsageMessage() << "\n";
    return 2;
  }
  const std::string command = args[1];
  if (command == "tokenize" && args.size() == 2) return Tokenize();
  if (command == "detokenize" && args.size() == 3) {
    auto client = cardvault::client::VaultClient::Create(Options("processor"));
    if (!client.ok()) return Fail(client.status());
    cardvault::v1::DetokenizeRequest request;
    request.set_token(args[2]);
    request.set_purpose(absl::GetFlag(FLAGS_purpose));
    auto response = (*client)->Detokenize(request);
    if (!response.ok()) return Fail(response.status());
    const cardvault::v1::Card& card = response->card();
    std::cout << "pan: " << card.pan() << "\n";
    std::cout << "domain: " << response->domain() << "\n";
    if (card.exp_month() != 0) {
      std::cout << "expiry: " << card.exp_month() << "/" << card.exp_year()
                << "\n";
    }
    if (!card.cardholder_name().empty()) {
      std::cout << "name: " << card.cardholder_name() << "\n";
    }
    if (!response->cvv().empty())
      std::cout << "cvv: " << response->cvv() << "\n";
    return 0;
  }
  if (command == "info" && args.size() == 3) {
    auto client = cardvault::client::VaultClient::Create(Options("pos"));
    if (!client.ok()) return Fail(client.status());
    auto info = (*client)->GetTokenInfo(args[2]);
    if (!info.ok()) return Fail(info.status());
    std::cout << Json(*info) << "\n";
    return 0;
  }
  if (command == "delete" && args.size() == 3) {
    auto client = cardvault::client::VaultClient::Create(Options("pos"));
    if (!client.ok()) return Fail(client.status());
    auto deleted = (*client)->DeleteToken(args[2]);
    if (!deleted.ok()) return Fail(deleted.status());
    std::cout << (*deleted ? "deleted" : "nothing to delete") << "\n";
    return 0;
  }
  if (command == "health" && args.size() == 2) {
    // grpc.health.v1 Check of the whole server over mutual TLS: exit 0 only
    // when it is SERVING (the HSM answers and the listener accepts).
    auto channel =
        cardvault::client::CreateMutualTlsChannel(Options("watchdog"));
    if (!channel.ok()) return Fail(channel.status());
    auto serving = cardvault::client::CheckHealth(
        *channel, "", absl::Milliseconds(absl::GetFlag(FLAGS_deadline_ms)));
    if (!serving.ok()) return Fail(serving.status());
    switch (*serving) {
      case cardvault::client::ServingStatus::kServing:
        std::cout << "SERVING\n";
        return 0;
      case cardvault::client::ServingStatus::kNotServing:
        std::cout << "NOT_SERVING\n";
        return 1;
      default:
        std::cout << "UNKNOWN\n";
        return 1;
    }
  }
  if (command == "keys" && args.size() >= 3) return Keys(args);
  if (command == "backup" && args.size() >= 3) return Backup(args);
  if (command == "audit" && args.size() == 3 &&
      (std::string(args[2]) == "list" || std::string(args[2]) == "verify")) {
    return Audit(args[2]);
  }
  std::cerr << absl::ProgramUsageMessage() << "\n";
  return 2;
}
