// cardvault-bench: load over mutual TLS with gRPC's callback API, against a
// running cardvaultd. Prints calls and items per second, latency
// percentiles and errors by status code per operation, as a table and as
// one JSON line.
//
//   cardvault-bench --address=127.0.0.1:9443 --pki_dir=var/dev/pki
//       --mix=tokenize --channels=4 --in_flight=64 --duration_seconds=10
//   --mix takes op[=weight] items: tokenize, detokenize, info, batch, health
//   (grpc.health.v1.Health/Check: the no-op baseline through the same TLS
//   and gRPC stack).
#include <grpcpp/client_context.h>

#include <cstdio>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cardvault/v1/vault.grpc.pb.h"
#include "client/load_generator.h"
#include "client/vault_client.h"

ABSL_FLAG(std::string, address, "127.0.0.1:9443",
          "cardvaultd host:port, or several, comma-separated (nodes of one "
          "cluster): channel i goes to address i mod their number.");
ABSL_FLAG(std::string, pki_dir, "var/dev/pki",
          "Directory with ca.crt and <identity>.crt/.key.");
ABSL_FLAG(std::string, tokenizer, "pos",
          "Identity (file stem in pki_dir) for tokenize, info, batch, health.");
ABSL_FLAG(std::string, detokenizer, "processor",
          "Identity (file stem in pki_dir) for detokenize.");
ABSL_FLAG(std::string, mix, "tokenize",
          "Comma-separated op[=weight]: tokenize, detokenize, info, batch, "
          "health.");
ABSL_FLAG(int, channels, 4, "Channels (TLS connections) per identity.");
ABSL_FLAG(int, in_flight, 64, "Calls outstanding at any time.");
ABSL_FLAG(double, duration_seconds, 10, "Measured time.");
ABSL_FLAG(double, warmup_seconds, 2, "Unmeasured time before it.");
ABSL_FLAG(int, batch_size, 1000, "Cards per TokenizeBatch call.");
ABSL_FLAG(int, pans, 10000,
          "Distinct generated PANs (and tokens made beforehand for "
          "detokenize and info).");
ABSL_FLAG(std::string, label, "", "Free text copied into the JSON line.");
ABSL_FLAG(std::string, tsv_out, "",
          "Also append one line per op to this file: label, op, channels, "
          "in_flight, calls/s, items/s, p50, p99 (us), errors (for plots).");

namespace cardvault {
namespace {

namespace pb = ::cardvault::v1;

// Luhn-valid 16-digit PANs in a test range, reproducible from `seed`.
std::vector<std::string> MakePans(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::string> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) {
    std::string pan = "4";
    for (int d = 0; d < 14; ++d) pan.push_back('0' + rng() % 10);
    int sum = 0;
    for (int k = 0; k < 15; ++k) {
      int v = pan[14 - k] - '0';
      if (k % 2 == 0) v = v * 2 > 9 ? v * 2 - 9 : v * 2;
      sum += v;
    }
    pan.push_back('0' + (10 - sum % 10) % 10);
    out.push_back(std::move(pan));
  }
  return out;
}

std::string Serialize(const google::protobuf::Message& m) {
  std::string out;
  m.SerializeToString(&out);
  return out;
}

absl::StatusOr<std::vector<std::shared_ptr<grpc::Channel>>> Channels(
    absl::string_view identity, int n) {
  std::vector<std::shared_ptr<grpc::Channel>> out;
  const std::string dir = absl::GetFlag(FLAGS_pki_dir);
  const std::vector<std::string> addresses =
      absl::StrSplit(absl::GetFlag(FLAGS_address), ',', absl::SkipEmpty());
  if (addresses.empty()) return absl::InvalidArgumentError("no --address");
  for (int i = 0; i < n; ++i) {
    client::ClientOptions options;
    options.address = addresses[i % addresses.size()];
    options.ca_file = dir + "/ca.crt";
    options.cert_file = absl::StrCat(dir, "/", identity, ".crt");
    options.key_file = absl::StrCat(dir, "/", identity, ".key");
    options.separate_connection_index = i;
    auto channel = client::CreateMutualTlsChannel(options);
    if (!channel.ok()) return channel.status();
    out.push_back(*std::move(channel));
  }
  return out;
}

// Tokens for `pans`, made with 1,000-card batches before the run.
absl::StatusOr<std::vector<std::string>> MakeTokens(
    const std::shared_ptr<grpc::Channel>& channel,
    const std::vector<std::string>& pans) {
  auto stub = pb::TokenVault::NewStub(channel);
  std::vector<std::string> tokens;
  for (size_t start = 0; start < pans.size(); start += 1000) {
    pb::TokenizeBatchRequest batch;
    for (size_t i = start; i < std::min(pans.size(), start + 1000); ++i) {
      batch.add_requests()->mutable_card()->set_pan(pans[i]);
    }
    grpc::ClientContext context;
    pb::TokenizeBatchResponse response;
    grpc::Status s = stub->TokenizeBatch(&context, batch, &response);
    if (!s.ok()) return client::FromGrpcStatus(s);
    for (const auto& r : response.results()) {
      if (r.status().code() != 0) {
        return absl::InternalError(
            absl::StrCat("tokenizing for the run: ", r.status().message()));
      }
      tokens.push_back(r.response().token());
    }
  }
  return tokens;
}

int Run() {
  const int n_pans = std::max(1, absl::GetFlag(FLAGS_pans));
  const int channels = std::max(1, absl::GetFlag(FLAGS_channels));
  const std::vector<std::string> pans = MakePans(n_pans, 20261125);
  auto tokenizer = Channels(absl::GetFlag(FLAGS_tokenizer), channels);
  if (!tokenizer.ok()) {
    std::cerr << tokenizer.status() << "\n";
    return 1;
  }
  std::vector<client::LoadOp> ops;
  std::vector<std::string> tokens;
  for (absl::string_view item :
       absl::StrSplit(absl::GetFlag(FLAGS_mix), ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv =
        absl::StrSplit(item, absl::MaxSplits('=', 1));
    client::LoadOp op;
    op.name = kv.first;
    if (!kv.second.empty() && !absl::SimpleAtoi(kv.second, &op.weight)) {
      std::cerr << "bad weight in --mix: " << item << "\n";
      return 2;
    }
    op.channels = *tokenizer;
    if (op.name == "tokenize") {
      op.method = "/cardvault.v1.TokenVault/Tokenize";
      for (const std::string& pan : pans) {
        pb::TokenizeRequest r;
        r.mutable_card()->set_pan(pan);
        r.mutable_card()->set_exp_month(12);
        r.mutable_card()->set_exp_year(2030);
        op.requests.push_back(Serialize(r));
      }
    } else if (op.name == "batch") {
      op.method = "/cardvault.v1.TokenVault/TokenizeBatch";
      op.items_per_call = std::max(1, absl::GetFlag(FLAGS_batch_size));
      for (int start = 0; start < n_pans; start += op.items_per_call) {
        pb::TokenizeBatchRequest r;
        for (int i = 0; i < op.items_per_call; ++i) {
          r.add_requests()->mutable_card()->set_pan(pans[(start + i) % n_pans]);
        }
        op.requests.push_back(Serialize(r));
      }
    } else if (op.name == "health") {
      op.method = "/grpc.health.v1.Health/Check";
      op.requests.push_back("");  // HealthCheckRequest{service: ""}
    } else if (op.name == "detokenize" || op.name == "info") {
      if (tokens.empty()) {
        auto made = MakeTokens(tokenizer->front(), pans);
        if (!made.ok()) {
          std::cerr << made.status() << "\n";
          return 1;
        }
        tokens = *std::move(made);
      }
      if (op.name == "detokenize") {
        op.method = "/cardvault.v1.TokenVault/Detokenize";
        auto detokenizer = Channels(absl::GetFlag(FLAGS_detokenizer), channels);
        if (!detokenizer.ok()) {
          std::cerr << detokenizer.status() << "\n";
          return 1;
        }
        op.channels = *detokenizer;
        for (const std::string& t : tokens) {
          pb::DetokenizeRequest r;
          r.set_token(t);
          r.set_purpose("authorization");
          op.requests.push_back(Serialize(r));
        }
      } else {
        op.method = "/cardvault.v1.TokenVault/GetTokenInfo";
        for (const std::string& t : tokens) {
          pb::GetTokenInfoRequest r;
          r.set_token(t);
          op.requests.push_back(Serialize(r));
        }
      }
    } else {
      std::cerr << "unknown op in --mix: " << op.name << "\n";
      return 2;
    }
    ops.push_back(std::move(op));
  }
  client::LoadOptions options;
  options.in_flight = absl::GetFlag(FLAGS_in_flight);
  options.duration = absl::Seconds(absl::GetFlag(FLAGS_duration_seconds));
  options.warmup = absl::Seconds(absl::GetFlag(FLAGS_warmup_seconds));
  auto results = client::RunLoad(ops, options);
  if (!results.ok()) {
    std::cerr << results.status() << "\n";
    return 2;
  }
  std::printf("%-11s %10s %12s %9s %9s %9s %9s  %s\n", "op", "calls/s",
              "items/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "errors");
  std::vector<std::string> json;
  uint64_t total_errors = 0;
  std::FILE* tsv = nullptr;
  if (!absl::GetFlag(FLAGS_tsv_out).empty()) {
    tsv = std::fopen(absl::GetFlag(FLAGS_tsv_out).c_str(), "a");
  }
  for (const client::OpResult& r : *results) {
    std::vector<std::string> errors;
    for (const auto& [code, n] : r.errors) {
      errors.push_back(absl::StrCat(code, "=", n));
      total_errors += n;
    }
    std::printf("%-11s %10.0f %12.0f %9.0f %9.0f %9.0f %9.0f  %s\n",
                r.name.c_str(), r.calls_per_second, r.items_per_second,
                r.p50_us, r.p90_us, r.p99_us, r.p999_us,
                errors.empty() ? "-" : absl::StrJoin(errors, " ").c_str());
    uint64_t op_errors = 0;
    for (const auto& [code, n] : r.errors) op_errors += n;
    if (tsv != nullptr) {
      std::fprintf(tsv, "%s\t%s\t%d\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%llu\n",
                   absl::GetFlag(FLAGS_label).c_str(), r.name.c_str(), channels,
                   options.in_flight, r.calls_per_second, r.items_per_second,
                   r.p50_us, r.p99_us,
                   static_cast<unsigned long long>(op_errors));
    }
    std::vector<std::string> error_json;
    for (const auto& [code, n] : r.errors) {
      error_json.push_back(absl::StrFormat("\"%s\":%d", code, n));
    }
    json.push_back(absl::StrFormat(
        "{\"op\":\"%s\",\"calls\":%d,\"calls_per_second\":%.1f,"
        "\"items_per_second\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,"
        "\"p99_us\":%.1f,\"p999_us\":%.1f,\"errors\":{%s}}",
        r.name, r.calls, r.calls_per_second, r.items_per_second, r.p50_us,
        r.p90_us, r.p99_us, r.p999_us, absl::StrJoin(error_json, ",")));
  }
  std::printf(
      "{\"label\":\"%s\",\"channels\":%d,\"in_flight\":%d,"
      "\"duration_seconds\":%.1f,\"results\":[%s]}\n",
      absl::GetFlag(FLAGS_label).c_str(), channels, options.in_flight,
      absl::GetFlag(FLAGS_duration_seconds), absl::StrJoin(json, ",").c_str());
  if (tsv != nullptr) std::fclose(tsv);
  return total_errors == 0 ? 0 : 3;
}

}  // namespace
}  // namespace cardvault

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "cardvault-bench --address=HOST:PORT --pki_dir=DIR --mix=OP[=W],... "
      "[--channels=4 --in_flight=64 --duration_seconds=10]");
  absl::ParseCommandLine(argc, argv);
  return cardvault::Run();
}
