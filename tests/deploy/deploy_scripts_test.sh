#!/usr/bin/env bash
# The set-up scripts make exactly the documented files, and a second run
# reuses them (same token, same PKI, same config) instead of replacing them.
set -euo pipefail
src=${1:?usage: deploy_scripts_test.sh SOURCE_DIR}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

run_setup() {
  "$src/deploy/init-softhsm.sh" "$work/softhsm" cardvault-dev >/dev/null
  "$src/deploy/make-pki.sh" "$work/pki" "$work/ca" >/dev/null
  "$src/deploy/write-config.sh" "$work" cardvault-dev 127.0.0.1:9443 "$work/cardvaultd.textproto" >/dev/null
}
snapshot() { (cd "$work" && find . -type f ! -path './softhsm/tokens/*' -print0 | sort -z | xargs -0 sha256sum); }

run_setup
first=$(snapshot)
tokens_first=$(ls "$work/softhsm/tokens")

expected="admin.crt admin.key auditor.crt auditor.key ca.crt pos.crt pos.key processor.crt processor.key server.crt server.key watchdog.crt watchdog.key"
actual=$(ls "$work/pki" | sort | tr '\n' ' ' | sed 's/ $//')
[[ "$actual" == "$expected" ]] || fail "pki has [$actual], want [$expected]"
[[ ! -e "$work/pki/ca.key" ]] || fail "CA key must not be in the PKI directory"

for key in "$work"/pki/*.key "$work/ca/ca.key" "$work/softhsm/user.pin"; do
  mode=$(stat -c %a "$key")
  [[ "$mode" == 600 ]] || fail "$key has mode $mode, want 600"
done

openssl verify -CAfile "$work/pki/ca.crt" "$work"/pki/*.crt >/dev/null || fail "chain"
san=$(openssl x509 -in "$work/pki/server.crt" -noout -ext subjectAltName)
grep -q "DNS:localhost" <<<"$san" || fail "server SAN lacks localhost: $san"
grep -q "IP Address:127.0.0.1" <<<"$san" || fail "server SAN lacks 127.0.0.1: $san"
for role in pos processor auditor admin watchdog; do
  san=$(openssl x509 -in "$work/pki/$role.crt" -noout -ext subjectAltName)
  grep -q "URI:spiffe://cardvault.dev/$role" <<<"$san" || fail "$role SAN: $san"
  openssl x509 -in "$work/pki/$role.crt" -noout -ext extendedKeyUsage | grep -q "Client Authentication" \
    || fail "$role is not a client certificate"
done

SOFTHSM2_CONF="$work/softhsm/softhsm2.conf" softhsm2-util --show-slots | grep -q "cardvault-dev" \
  || fail "token not found"

grep -q "$(cat "$work/softhsm/user.pin")" "$work/cardvaultd.textproto" && fail "PIN value in the config"

run_setup
second=$(snapshot)
[[ "$first" == "$second" ]] || fail "second run changed files: $(diff <(echo "$first") <(echo "$second"))"
[[ "$tokens_first" == "$(ls "$work/softhsm/tokens")" ]] || fail "second run made a new token"
echo "1 passed, 0 failed"
