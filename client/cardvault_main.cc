// cardvault: command-line client.
//
//   echo 4111111111111111 | cardvault tokenize [--exp_month=12 --exp_year=2030]
//   cardvault detokenize tok_...
//
// The PAN is read from stdin, never from argv (argv is visible to every user
// in /proc). Certificate flags default to the dev PKI: pos for tokenize,
// processor for detokenize.
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "client/vault_client.h"

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
ABSL_FLAG(int, deadline_ms, 5000, "Deadline of the call in milliseconds.");

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

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "cardvault tokenize [--exp_month=M --exp_year=Y --name=N] < pan\n"
      "       cardvault detokenize TOKEN");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    std::cerr << absl::ProgramUsageMessage() << "\n";
    return 2;
  }
  const std::string command = args[1];
  if (command == "tokenize" && args.size() == 2) {
    std::string pan;
    std::getline(std::cin, pan);
    cardvault::v1::Card card;
    // Only the line ending is removed; the server judges everything else.
    if (!pan.empty() && pan.back() == '\r') pan.pop_back();
    card.set_pan(pan);
    card.set_exp_month(absl::GetFlag(FLAGS_exp_month));
    card.set_exp_year(absl::GetFlag(FLAGS_exp_year));
    card.set_cardholder_name(absl::GetFlag(FLAGS_name));
    auto client = cardvault::client::VaultClient::Create(Options("pos"));
    if (!client.ok()) return Fail(client.status());
    auto token = (*client)->Tokenize(card);
    if (!token.ok()) return Fail(token.status());
    std::cout << *token << "\n";
    return 0;
  }
  if (command == "detokenize" && args.size() == 3) {
    auto client = cardvault::client::VaultClient::Create(Options("processor"));
    if (!client.ok()) return Fail(client.status());
    auto card = (*client)->Detokenize(args[2]);
    if (!card.ok()) return Fail(card.status());
    std::cout << "pan: " << card->pan() << "\n";
    if (card->exp_month() != 0) {
      std::cout << "expiry: " << card->exp_month() << "/" << card->exp_year()
                << "\n";
    }
    if (!card->cardholder_name().empty()) {
      std::cout << "name: " << card->cardholder_name() << "\n";
    }
    return 0;
  }
  std::cerr << absl::ProgramUsageMessage() << "\n";
  return 2;
}
