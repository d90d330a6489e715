#!/usr/bin/env bash
# Two vault nodes on one throw-away PostgreSQL 15, for development:
#   deploy/multinode.sh up|down|status
# up      installs packages and builds (as the quickstart does), then, reusing
#         what is there: one SoftHSM2 token (one KEK) and one dev PKI for both
#         nodes, PostgreSQL (initdb, pg_ctl) on 127.0.0.1:55432 only, the
#         schema (cardvaultd --migrate), and node-a on 127.0.0.1:9443 and
#         node-b on 127.0.0.1:9444 in the background; returns once both
#         answer health checks over mutual TLS. Running parts are left alone.
# down    stops the nodes (SIGTERM; SIGKILL after 20 s) and PostgreSQL
#         (pg_ctl stop -m fast). Nothing running is fine.
# status  what runs; exit 0 when all three do, 3 otherwise.
#
# State (kept between runs; remove it to start over), in
# CARDVAULT_MULTINODE_DIR (default var/multinode; a relative path is from the
# repository's root, as BUILD_DIR's is), laid out as var/dev/:
#   softhsm/ pki/ ca/ policy.textproto   token, PKI, policy shared by both nodes
#   node-a.textproto node-b.textproto    the nodes' configs (write-config.sh)
#   node-X.log node-X.pid node-X.prom    each node's output, pid, metrics
#   migrate.log initdb.log               cardvaultd --migrate, initdb output
#   pg/                                  PostgreSQL: data/, postgres.log and
#                                        its unix socket (owned by the
#                                        `postgres` user when run as root)
#   pgpass                               the `cardvault` role's password
#                                        (PGPASSFILE format, mode 0600;
#                                        random, made by the first up)
#   postgres.conninfo                    libpq connection string naming
#                                        pgpass (mode 0600)
# The password is never printed, in argv, a config or a log. As root,
# PostgreSQL runs as the `postgres` user, which must reach the state directory
# (up checks; a directory under /root is closed to it).
#
# Ports: CARDVAULT_MULTINODE_PORT_A (9443), CARDVAULT_MULTINODE_PORT_B
# (9444), CARDVAULT_MULTINODE_PG_PORT (55432); up fails if one is taken. The
# nodes get theirs as --listen_address, so configs written for other ports
# keep working; to move a running set-up to other ports, down first.
# Binaries come from BUILD_DIR (default build); CARDVAULT_MULTINODE_SKIP_BUILD=1
# skips install-deps.sh and build.sh (the tests use both).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
cmd=${1:-}
[[ "$cmd" =~ ^(up|down|status)$ && $# -eq 1 ]] \
  || { echo "usage: deploy/multinode.sh up|down|status" >&2; exit 2; }

state=${CARDVAULT_MULTINODE_DIR:-var/multinode}
port_a=${CARDVAULT_MULTINODE_PORT_A:-9443}
port_b=${CARDVAULT_MULTINODE_PORT_B:-9444}
pg_port=${CARDVAULT_MULTINODE_PG_PORT:-55432}
pg_bin=/usr/lib/postgresql/15/bin
label=cardvault-multinode
nodes=(node-a node-b)
declare -A node_port=([node-a]=$port_a [node-b]=$port_b)

say() { echo "multinode: $*"; }
die() { echo "multinode: $*" >&2; exit 1; }

# Path to show the user: relative to the repository when inside it.
shown() { local p=$1; [[ "$p" == "$repo/"* ]] && p=${p#"$repo/"}; printf '%s' "$p"; }

# A process that runs (a zombie does not: a container's pid 1 may never reap).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ "${stat:0:1}" != Z ]]
}
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [[ "$cmd" == up ]]; then
  mkdir -p "$state"
fi
if [[ ! -d "$state" ]]; then
  [[ "$cmd" == down ]] && { say "nothing in $state"; exit 0; }
  say "no state in $state (run deploy/multinode.sh up)"; exit 3
fi
state=$(cd "$state" && pwd)
build=${BUILD_DIR:-build}
[[ "$build" == /* ]] || build=$repo/$build
pg=$state/pg
data=$pg/data
cli=$build/client/cardvault
export SOFTHSM2_CONF=$state/softhsm/softhsm2.conf

# PostgreSQL refuses to run as root: as root its processes run as the
# `postgres` system user (postgresql-common makes it), from inside $pg.
pg_user=""
if [[ $(id -u) -eq 0 ]]; then
  id postgres >/dev/null 2>&1 \
    || die "running as root, and PostgreSQL refuses root, but there is no postgres user (install postgresql-15)"
  pg_user=postgres
fi
as_pg() {
  if [[ -n "$pg_user" ]]; then
    (cd "$pg" && runuser -u "$pg_user" -- "$@")
  else
    (cd "$pg" && "$@")
  fi
}
pg_running() { [[ -f "$data/postmaster.pid" ]] && as_pg "$pg_bin/pg_ctl" status -D "$data" >/dev/null 2>&1; }
# The port a running postmaster listens on (line 4 of postmaster.pid).
pg_running_port() { sed -n 4p "$data/postmaster.pid"; }
psql_super() { as_pg "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$pg" -p "$(pg_running_port)" -d postgres "$@"; }

# The pid of a node if it runs (its pid file names a cardvaultd of this
# state directory), else nothing.
node_pid() {
  local node=$1 pid
  pid=$(cat "$state/$node.pid" 2>/dev/null) || return 0
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "--config $state/$node.textproto" \
    && echo "$pid"
  return 0
}
node_address() {  # the --listen_address a running node was started with
  tr '\0' '\n' <"/proc/$1/cmdline" | sed -n 's/^--listen_address=//p'
}
healthy() {  # healthy ADDRESS: the node answers SERVING over mutual TLS
  "$cli" --pki_dir="$state/pki" --address="$1" --deadline_ms=1000 health >/dev/null 2>&1
}

pg_up() {
  [[ -x "$pg_bin/initdb" ]] || die "$pg_bin/initdb is missing: install postgresql-15"
  if [[ ! -d "$data" ]]; then
    rm -rf "$pg"
    install -d -m 700 ${pg_user:+-o "$pg_user" -g "$pg_user"} "$pg"
    # --no-sync: a throw-away cluster; the server itself runs with fsync on.
    as_pg "$pg_bin/initdb" -D "$data" --auth-local=peer --auth-host=scram-sha-256 \
      --encoding=UTF8 --locale=C --no-sync --no-instructions >"$state/initdb.log" 2>&1 \
      || { cat "$state/initdb.log" >&2; die "initdb failed"; }
    as_pg tee -a "$data/postgresql.conf" >/dev/null <<CONF

# deploy/multinode.sh: loopback TCP only (the port is pg_ctl's -p), the unix
# socket in the state directory.
listen_addresses = '127.0.0.1'
unix_socket_directories = '${pg//\'/\'\'}'
log_line_prefix = '%m [%p] '
CONF
    say "initialised PostgreSQL in $(shown "$data")"
  fi
  if pg_running; then
    [[ "$(pg_running_port)" == "$pg_port" ]] \
      || die "PostgreSQL of $(shown "$state") runs on port $(pg_running_port), not $pg_port: run deploy/multinode.sh down first"
    say "PostgreSQL already running on 127.0.0.1:$pg_port"
  else
    port_in_use "$pg_port" && die "port $pg_port is taken (set CARDVAULT_MULTINODE_PG_PORT)"
    as_pg "$pg_bin/pg_ctl" start -D "$data" -l "$pg/postgres.log" -w -t 60 -o "-p $pg_port" >/dev/null \
      || { tail -n 20 "$pg/postgres.log" >&2; die "PostgreSQL did not start"; }
    say "PostgreSQL on 127.0.0.1:$pg_port"
  fi

  # The role's password: made once, kept only in pgpass (libpq's format).
  if [[ ! -s "$state/pgpass" ]]; then
    (umask 077; printf '127.0.0.1:*:cardvault:cardvault:%s\n' "$(openssl rand -hex 24)" >"$state/pgpass")
  fi
  chmod 600 "$state/pgpass"
  if [[ -z "$(psql_super -tA -c "SELECT 1 FROM pg_roles WHERE rolname = 'cardvault'")" ]]; then
    local password
    password=$(cut -d: -f5 "$state/pgpass")
    # On stdin, not argv; the server logs neither the statement nor (at any
    # error) its text. password_encryption is scram-sha-256.
    printf '%s\n' "SET log_statement = 'none';" "SET log_min_error_statement = 'panic';" \
      "CREATE ROLE cardvault LOGIN PASSWORD '$password';" | psql_super
    say "created role cardvault (password in $(shown "$state/pgpass"))"
  fi
  if [[ -z "$(psql_super -tA -c "SELECT 1 FROM pg_database WHERE datname = 'cardvault'")" ]]; then
    psql_super -c "CREATE DATABASE cardvault OWNER cardvault"
    say "created database cardvault"
  fi
  # Rewritten each time (the port may change); it holds no secret, but
  # cardvaultd wants it private.
  (umask 077; echo "host=127.0.0.1 port=$pg_port dbname=cardvault user=cardvault passfile=$state/pgpass sslmode=disable connect_timeout=10" \
    >"$state/postgres.conninfo.tmp")
  mv "$state/postgres.conninfo.tmp" "$state/postgres.conninfo"
  chmod 600 "$state/postgres.conninfo"
}

node_up() {
  local node=$1 port=${node_port[$1]} pid address
  pid=$(node_pid "$node")
  if [[ -n "$pid" ]]; then
    address=$(node_address "$pid")
    [[ "$address" == "127.0.0.1:$port" ]] \
      || die "$node runs on $address, not 127.0.0.1:$port: run deploy/multinode.sh down first"
    say "$node already running (pid $pid) on $address"
  else
    local suffix=${node#node-}
    port_in_use "$port" && die "port $port is taken (set CARDVAULT_MULTINODE_PORT_${suffix^^})"
    # Its own session: a ^C or a closed terminal of the caller does not reach it.
    setsid "$build/server/cardvaultd" --config "$state/$node.textproto" \
      --listen_address="127.0.0.1:$port" </dev/null >>"$state/$node.log" 2>&1 &
    pid=$!
    echo "$pid" >"$state/$node.pid"
  fi
  local deadline=$((SECONDS + 60))
  until healthy "127.0.0.1:$port"; do
    if ! alive "$pid"; then
      rm -f "$state/$node.pid"
      tail -n 20 "$state/$node.log" >&2
      die "$node exited (log: $(shown "$state/$node.log"))"
    fi
    ((SECONDS < deadline)) || die "$node not serving after 60 s (log: $(shown "$state/$node.log"))"
    sleep 0.2
  done
  say "$node serving on 127.0.0.1:$port (pid $pid)"
}

up() {
  if [[ -z "${CARDVAULT_MULTINODE_SKIP_BUILD:-}" ]]; then
    deploy/install-deps.sh
    deploy/build.sh
  fi
  [[ -x "$build/server/cardvaultd" && -x "$cli" ]] || die "no cardvaultd or cardvault in $build (run deploy/build.sh)"
  if [[ -n "$pg_user" ]]; then
    chmod o+x "$state"  # the postgres user needs to reach pg/ (and only that)
    runuser -u "$pg_user" -- test -x "$state" \
      || die "the postgres user cannot reach $state (a parent directory is closed to others, e.g. /root): set CARDVAULT_MULTINODE_DIR to a directory it can reach"
  fi
  deploy/init-softhsm.sh "$state/softhsm" "$label"
  deploy/make-pki.sh "$state/pki" "$state/ca"
  pg_up
  for node in "${nodes[@]}"; do
    WRITE_CONFIG_POSTGRES="$state/postgres.conninfo" WRITE_CONFIG_NODE_NAME="$node" \
      deploy/write-config.sh "$state" "$label" "127.0.0.1:${node_port[$node]}" "$state/$node.textproto"
  done
  "$build/server/cardvaultd" --config "$state/node-a.textproto" --migrate >>"$state/migrate.log" 2>&1 \
    || { tail -n 20 "$state/migrate.log" >&2; die "cardvaultd --migrate failed"; }
  say "schema: $(grep -o 'PostgreSQL schema at version.*' "$state/migrate.log" | tail -n 1)"
  # One after the other: the first node creates the KEK and the keys, the
  # second finds them.
  for node in "${nodes[@]}"; do node_up "$node"; done
  local c s
  c=$(shown "$cli"); s=$(shown "$state")
  cat <<USAGE
multinode: up. Tokenize through node-a, detokenize through node-b:
  echo 4111111111111111 | $c --pki_dir=$s/pki --address=127.0.0.1:$port_a tokenize
  $c --pki_dir=$s/pki --address=127.0.0.1:$port_b detokenize --purpose=authorization TOKEN
  $c --pki_dir=$s/pki --address=127.0.0.1:$port_b audit list   # both nodes' records
Stop with: deploy/multinode.sh down
USAGE
}

down() {
  local node pid i
  for node in node-b node-a; do
    pid=$(node_pid "$node")
    if [[ -n "$pid" ]]; then
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do
        alive "$pid" || break
        sleep 0.2
      done
      if alive "$pid"; then
        say "$node did not stop within 20 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while alive "$pid"; do sleep 0.1; done
      fi
      say "stopped $node (pid $pid)"
    fi
    rm -f "$state/$node.pid"
  done
  if pg_running; then
    as_pg "$pg_bin/pg_ctl" stop -D "$data" -m fast -w -t 60 >/dev/null
    say "stopped PostgreSQL"
  fi
  return 0
}

status() {
  local node pid all=0
  for node in "${nodes[@]}"; do
    pid=$(node_pid "$node")
    if [[ -z "$pid" ]]; then
      say "$node: not running"; all=3
    elif healthy "$(node_address "$pid")"; then
      say "$node: serving on $(node_address "$pid") (pid $pid)"
    else
      say "$node: running (pid $pid) on $(node_address "$pid"), not serving"; all=3
    fi
  done
  if pg_running; then
    say "PostgreSQL: running on 127.0.0.1:$(pg_running_port) (pid $(head -n 1 "$data/postmaster.pid"), data $(shown "$data"))"
  else
    say "PostgreSQL: not running"; all=3
  fi
  return "$all"
}

"$cmd"
