#!/usr/bin/env bash
# The deploy scripts, as a user runs them.
#   deploy_scripts_test.sh SOURCE_DIR [BUILD_DIR TEST]
# TEST (default: setup, the only one without BUILD_DIR):
#   setup      the set-up scripts make exactly the documented files, and a
#              second run reuses them (same token, same PKI, same config)
#              instead of replacing them.
#   multinode  deploy/multinode.sh up starts PostgreSQL and two nodes on free
#              ports in a temporary state directory: a card tokenized through
#              one node detokenizes through the other, the credential files
#              are private and the password is in no log or config; a second
#              up changes nothing, down leaves nothing running, and the next
#              up reuses the state.
set -euo pipefail
src=${1:?usage: deploy_scripts_test.sh SOURCE_DIR [BUILD_DIR TEST]}
bin=${2:-}
which=${3:-setup}
# Under /tmp itself (not TMPDIR): as root, PostgreSQL runs as the postgres
# user, which must reach the state directory.
work=$(mktemp -d /tmp/cardvault-deploy-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

test_setup() {
  run_setup() {
    "$src/deploy/init-softhsm.sh" "$work/softhsm" cardvault-dev >/dev/null
    "$src/deploy/make-pki.sh" "$work/pki" "$work/ca" >/dev/null
    "$src/deploy/write-config.sh" "$work" cardvault-dev 127.0.0.1:9443 "$work/cardvaultd.textproto" >/dev/null
  }
  snapshot() { (cd "$work" && find . -type f ! -path './softhsm/tokens/*' -print0 | sort -z | xargs -0 sha256sum); }

  run_setup
  local first tokens_first expected actual mode san role key second
  first=$(snapshot)
  tokens_first=$(ls "$work/softhsm/tokens")

  expected="admin.crt admin.key auditor.crt auditor.key ca.crt node.crt node.key pos.crt pos.key processor.crt processor.key server.crt server.key watchdog.crt watchdog.key"
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
}

# A running process (a zombie is not: a container's pid 1 may never reap).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ "${stat:0:1}" != Z ]]
}
# "PID START_TIME" of a process: names it even after its pid is reused.
identity() {
  local stat fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  read -r -a fields <<<"${stat##*) }"
  echo "$1 ${fields[19]}"
}
# Runs of the multinode test killed before their trap ran (a ctest timeout)
# left PostgreSQL and nodes running: stop them and remove their state.
remove_stale_runs() {
  local old owner
  for old in /tmp/cardvault-deploy-test.*; do
    owner=$(cat "$old/owner" 2>/dev/null) || continue
    [[ -n "$owner" && "$(identity "${owner%% *}")" != "$owner" ]] || continue
    CARDVAULT_MULTINODE_DIR=$old/multinode "$src/deploy/multinode.sh" down >/dev/null 2>&1 || true
    rm -rf "$old"
  done
}
# A port nothing uses: below the ephemeral range, where the other tests'
# servers get theirs from the kernel, and in no socket of /proc/net/tcp*.
picked=()
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 12000))
    [[ " ${picked[*]} " == *" $port "* ]] && continue
    grep -qi ":$(printf '%04X' "$port") " /proc/net/tcp /proc/net/tcp6 2>/dev/null && continue
    picked+=("$port")
    echo "$port"
    return
  done
}
listen_addresses() {  # listen_addresses PORT: hex addresses listening on PORT
  local hex _ addr st
  hex=$(printf '%04X' "$1")
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | while read -r _ addr _ st _; do
    if [[ "$st" == 0A && "${addr##*:}" == "$hex" ]]; then echo "${addr%:*}"; fi
  done
}
listening() { [[ -n "$(listen_addresses "$1")" ]]; }

test_multinode() {
  [[ -n "$bin" ]] || fail "multinode needs BUILD_DIR"
  remove_stale_runs
  identity $$ >"$work/owner"
  # As root, PostgreSQL runs as the postgres user, which must reach the state.
  chmod 711 "$work"
  local state=$work/multinode
  local pa pb pp
  pa=$(free_port); pb=$(free_port); pp=$(free_port)
  export CARDVAULT_MULTINODE_DIR=$state CARDVAULT_MULTINODE_PORT_A=$pa \
    CARDVAULT_MULTINODE_PORT_B=$pb CARDVAULT_MULTINODE_PG_PORT=$pp \
    BUILD_DIR=$bin CARDVAULT_MULTINODE_SKIP_BUILD=1
  local mn=$src/deploy/multinode.sh cli=$bin/client/cardvault
  # Whatever happens, nothing may be left running.
  trap '"$src/deploy/multinode.sh" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

  "$mn" up >"$work/up1.out" 2>&1 || { cat "$work/up1.out" >&2; fail "first up"; }
  grep -q -- "--address=127.0.0.1:$pa tokenize" "$work/up1.out" || fail "up does not say how to use node-a: $(cat "$work/up1.out")"
  grep -q -- "--address=127.0.0.1:$pb detokenize" "$work/up1.out" || fail "up does not say how to use node-b"

  local token out
  token=$(echo 4111111111111111 | "$cli" --pki_dir="$state/pki" --address="127.0.0.1:$pa" \
    tokenize --exp_month=12 --exp_year=2030) || fail "tokenize through node-a"
  out=$("$cli" --pki_dir="$state/pki" --address="127.0.0.1:$pb" detokenize --purpose=authorization "$token") \
    || fail "detokenize through node-b"
  grep -qx "pan: 4111111111111111" <<<"$out" || fail "node-b detokenized [$out]"
  # A CVV given to node-a comes back once, through node-b (cluster block).
  local with_cvv
  with_cvv=$(printf '5555555555554444\n7391\n' | "$cli" --pki_dir="$state/pki" --address="127.0.0.1:$pa" \
    tokenize --exp_month=12 --exp_year=2030 --cvv_from_stdin) || fail "tokenize with a CVV through node-a"
  out=$("$cli" --pki_dir="$state/pki" --address="127.0.0.1:$pb" detokenize --purpose=authorization "$with_cvv")
  grep -qx "cvv: 7391" <<<"$out" || fail "node-b did not return node-a's CVV [$out]"
  out=$("$cli" --pki_dir="$state/pki" --address="127.0.0.1:$pa" detokenize --purpose=authorization "$with_cvv")
  grep -q cvv <<<"$out" && fail "the CVV came back twice [$out]"
  out=$("$cli" --pki_dir="$state/pki" --address="127.0.0.1:$pb" audit list)
  grep -q '"node":"node-a"' <<<"$out" || fail "no audit record of node-a through node-b"
  grep -q '"node":"node-b"' <<<"$out" || fail "no audit record of node-b"

  # One token (one KEK) and one PKI for both nodes, PostgreSQL for storage.
  [[ $(find "$state/softhsm/tokens" -mindepth 1 -maxdepth 1 | wc -l) == 1 ]] || fail "more than one SoftHSM token"
  for node in node-a node-b; do
    grep -q "conninfo_file: \"$state/postgres.conninfo\"" "$state/$node.textproto" || fail "$node not on PostgreSQL"
    grep -q "node_name: \"$node\"" "$state/$node.textproto" || fail "$node has no node_name"
    grep -q "pin_file: \"$state/softhsm/user.pin\"" "$state/$node.textproto" || fail "$node's token"
    grep -q rocksdb "$state/$node.textproto" && fail "$node still configures rocksdb"
  done
  # Loopback only.
  for port in "$pa" "$pb" "$pp"; do
    out=$(listen_addresses "$port" | sort -u | tr '\n' ' ')
    [[ "$out" == "0100007F " ]] || fail "port $port listens on [$out], want only 127.0.0.1 (0100007F)"
  done

  # The credential: private files, the password nowhere else.
  local mode password
  for f in pgpass postgres.conninfo; do
    mode=$(stat -c %a "$state/$f")
    [[ "$mode" == 600 ]] || fail "$f has mode $mode, want 600"
  done
  grep -q "passfile=$state/pgpass" "$state/postgres.conninfo" || fail "conninfo does not name the passfile"
  grep -qi password "$state/postgres.conninfo" && fail "a password in the conninfo"
  password=$(cut -d: -f5 "$state/pgpass")
  [[ ${#password} -ge 32 ]] || fail "password of ${#password} characters"
  out=$(grep -rlF -- "$password" "$state" "$work"/*.out | grep -vx "$state/pgpass" || true)
  [[ -z "$out" ]] || fail "the password is in $out"

  # A second up changes nothing that runs.
  local pids_before pids_after
  pids_before=$(cat "$state/node-a.pid" "$state/node-b.pid")
  "$mn" up >"$work/up2.out" 2>&1 || { cat "$work/up2.out" >&2; fail "second up"; }
  pids_after=$(cat "$state/node-a.pid" "$state/node-b.pid")
  [[ "$pids_before" == "$pids_after" ]] || fail "second up restarted nodes"
  "$mn" status >"$work/status.out" 2>&1 || { cat "$work/status.out" >&2; fail "status while up"; }

  # down: no node, no postmaster, no backend, no listener left.
  local postmaster procs=() p
  postmaster=$(head -n 1 "$state/pg/data/postmaster.pid")
  read -r -d '' -a procs <<<"$postmaster $pids_after" || true
  for p in /proc/[0-9]*; do
    [[ "$(cut -d' ' -f4 "$p/stat" 2>/dev/null)" == "$postmaster" ]] && procs+=("${p#/proc/}")
  done
  ((${#procs[@]} >= 5)) || fail "expected postmaster, its backends and two nodes: ${procs[*]}"
  "$mn" down >"$work/down1.out" 2>&1 || { cat "$work/down1.out" >&2; fail "down"; }
  for p in "${procs[@]}"; do
    alive "$p" && fail "pid $p still runs after down: $(tr '\0' ' ' <"/proc/$p/cmdline")"
  done
  for port in "$pa" "$pb" "$pp"; do
    listening "$port" && fail "port $port still listening after down"
  done
  [[ ! -e "$state/node-a.pid" && ! -e "$state/node-b.pid" && ! -e "$state/pg/data/postmaster.pid" ]] \
    || fail "pid files left after down"
  if "$mn" status >/dev/null 2>&1; then fail "status says all runs after down"; fi
  "$mn" down >/dev/null 2>&1 || fail "down when nothing runs"

  # The next up reuses the state: the token made before detokenizes.
  "$mn" up >"$work/up3.out" 2>&1 || { cat "$work/up3.out" >&2; fail "up after down"; }
  [[ "$(cut -d: -f5 "$state/pgpass")" == "$password" ]] || fail "a new password"
  out=$("$cli" --pki_dir="$state/pki" --address="127.0.0.1:$pa" detokenize --purpose=authorization "$token") \
    || fail "detokenize after a restart"
  grep -qx "pan: 4111111111111111" <<<"$out" || fail "after a restart node-a detokenized [$out]"
  "$mn" down >"$work/down2.out" 2>&1 || { cat "$work/down2.out" >&2; fail "second down"; }
  [[ -z "${CARDVAULT_TEST_VERBOSE:-}" ]] || cat "$work"/*.out
  out=$(grep -rlF -- "$password" "$state" "$work"/*.out | grep -vx "$state/pgpass" || true)
  [[ -z "$out" ]] || fail "the password is in $out"
}

case "$which" in
  setup) test_setup ;;
  multinode) test_multinode ;;
  *) fail "unknown test $which" ;;
esac
echo "1 passed, 0 failed"
