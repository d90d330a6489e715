#include "server/config/policy_loader.h"

#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cardvault/config/v1/config.pb.h"
#include "server/config/config_loader.h"
#include "server/config/text_proto.h"
#include "server/crypto/sha256.h"

namespace cardvault::config {
namespace {

std::optional<auth::Role> RoleOf(int role) {
  switch (role) {
    case v1::TOKENIZER:
      return auth::Role::kTokenizer;
    case v1::DETOKENIZER:
      return auth::Role::kDetokenizer;
    case v1::AUDITOR:
      return auth::Role::kAuditor;
    case v1::ADMIN:
      return auth::Role::kAdmin;
    case v1::NODE:
      return auth::Role::kNode;
    default:
      return std::nullopt;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<auth::AccessPolicy>> ParsePolicy(
    absl::string_view text, absl::string_view source) {
  v1::AccessPolicy proto;
  if (absl::Status s = ParseTextProto(text, source, &proto); !s.ok()) {
    return s;
  }
  auth::PolicySpec spec;
  spec.allow_common_name_identities = proto.allow_common_name_identities();
  spec.purposes.assign(proto.purposes().begin(), proto.purposes().end());
  spec.cvv_purposes.assign(proto.cvv_purposes().begin(),
                           proto.cvv_purposes().end());
  for (int i = 0; i < proto.bindings_size(); ++i) {
    const v1::RoleBinding& b = proto.bindings(i);
    auth::RoleBinding binding;
    binding.identity = b.identity();
    for (int r : b.roles()) {
      const std::optional<auth::Role> role = RoleOf(r);
      if (!role.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(
            source, ": bindings[", i, "].roles has an unknown role"));
      }
      binding.roles.push_back(*role);
    }
    binding.tokenize_domains.assign(b.tokenize_domains().begin(),
                                    b.tokenize_domains().end());
    binding.detokenize_domains.assign(b.detokenize_domains().begin(),
                                      b.detokenize_domains().end());
    binding.detokenize_limit = {b.detokenize_limit().per_second(),
                                b.detokenize_limit().per_day()};
    spec.bindings.push_back(std::move(binding));
  }
  for (const v1::TokenDomain& d : proto.domains()) {
    auth::DomainSettings settings;
    settings.name = d.name();
    settings.deterministic = d.deterministic();
    settings.max_ttl = absl::Seconds(d.max_ttl_seconds());
    settings.bin_digits = d.bin_digits() == 0 ? 6 : d.bin_digits();
    spec.domains.push_back(std::move(settings));
  }
  absl::StatusOr<std::unique_ptr<auth::AccessPolicy>> policy =
      auth::AccessPolicy::Create(spec);
  if (!policy.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", policy.status().message()));
  }
  return policy;
}

absl::StatusOr<std::unique_ptr<auth::AccessPolicy>> LoadPolicyFile(
    const std::string& path) {
  absl::StatusOr<std::string> text = ReadTextFile(path, "policy file");
  if (!text.ok()) return text.status();
  return ParsePolicy(*text, path);
}

PolicyFileWatcher::PolicyFileWatcher(
    std::string path, std::string initial_text, absl::Duration interval,
    auth::PolicyHolder* holder,
    std::function<void(const PolicyReload&)> on_reload)
    : path_(std::move(path)),
      interval_(interval),
      holder_(holder),
      on_reload_(std::move(on_reload)),
      last_text_(std::move(initial_text)) {
  thread_ = std::thread([this] {
    while (!stop_.WaitForNotificationWithTimeout(interval_)) CheckNow();
  });
}

PolicyFileWatcher::~PolicyFileWatcher() {
  stop_.Notify();
  thread_.join();
}

void PolicyFileWatcher::CheckNow() {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::string> text = ReadTextFile(path_, "policy file");
  // A missing file mid-rename is not a change; the next check sees the new
  // content.
  if (!text.ok() || *text == last_text_) return;
  last_text_ = *text;
  absl::StatusOr<std::unique_ptr<auth::AccessPolicy>> policy =
      ParsePolicy(*text, path_);
  // A file others may write is not taken, however well it parses.
  if (absl::Status s = CheckFileIsPrivate(path_, "policy file", false);
      !s.ok() && policy.ok()) {
    policy = s;
  }
  PolicyReload reload{policy.status(), crypto::Sha256Hex(*text), ""};
  if (policy.ok()) {
    reload.changes = (*policy)->ChangesFrom(*holder_->Current());
    holder_->Replace(*std::move(policy));
  }
  if (on_reload_) on_reload_(reload);
}

}  // namespace cardvault::config
