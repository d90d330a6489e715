#!/usr/bin/env bash
# The PostgreSQL figures of docs/benchmarks.md, in one run on one machine:
# the embedded store, one node on PostgreSQL, two nodes on it (calls spread
# over both), each beside health in the same run, at both load shapes (4
# connections x 64 calls in flight; 64 connections x 1 call), and the bare
# libpq anchor (cardvault-pg-anchor: pipelined multi-row INSERTs with the
# same durability on the same server). Then bytes per token in PostgreSQL.
# State under var/bench-pg/ (removed first); JSON lines to
# docs/bench/postgres.jsonl.
#   deploy/bench-postgres.sh [SECONDS_PER_RUN]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
deploy/install-deps.sh
deploy/build.sh
state=$PWD/var/bench-pg
out=docs/bench/postgres.jsonl
mkdir -p docs/bench
: >"$out"
export CARDVAULT_MULTINODE_DIR=$state/multinode CARDVAULT_MULTINODE_SKIP_BUILD=1
export CARDVAULT_MULTINODE_PORT_A=9561 CARDVAULT_MULTINODE_PORT_B=9562
export CARDVAULT_MULTINODE_PG_PORT=55462
deploy/multinode.sh down >/dev/null 2>&1 || true
rm -rf "$state"
mkdir -p "$state"
chmod 755 "$state"

# The embedded baseline, on its own token and PKI.
deploy/bench-state.sh "$state/embedded" cardvault-bench-pg 127.0.0.1:9560
SOFTHSM2_CONF=$state/embedded/softhsm/softhsm2.conf \
  build/server/cardvaultd --config "$state/embedded/cardvaultd.textproto" \
  >"$state/embedded.log" 2>&1 &
embedded=$!
trap 'kill $embedded 2>/dev/null || true; deploy/multinode.sh down >/dev/null 2>&1 || true' EXIT

# Two nodes on PostgreSQL; the detokenizer without the dev rate limit.
deploy/multinode.sh up >/dev/null
deploy/multinode.sh down >/dev/null
sed -i '/detokenize_limit/d' "$CARDVAULT_MULTINODE_DIR/policy.textproto"
deploy/multinode.sh up >/dev/null

bench() {  # LABEL ADDRESSES PKI ARGS...
  local label=$1 address=$2 pki=$3
  shift 3
  build/client/cardvault-bench --address="$address" --pki_dir="$pki" \
    --duration_seconds="$seconds" --warmup_seconds=2 --label="$label" "$@" |
    tail -n 1 | tee -a "$out"
}
a=127.0.0.1:9561 b=127.0.0.1:9562
for shape in "--channels=4 --in_flight=64" "--channels=64 --in_flight=1"; do
  for op in health tokenize detokenize; do
    # shellcheck disable=SC2086
    bench embedded 127.0.0.1:9560 "$state/embedded/pki" --mix=$op $shape
    # shellcheck disable=SC2086
    bench postgres-1-node "$a" "$CARDVAULT_MULTINODE_DIR/pki" --mix=$op $shape
    # shellcheck disable=SC2086
    bench postgres-2-nodes "$a,$b" "$CARDVAULT_MULTINODE_DIR/pki" --mix=$op $shape
  done
done

# The anchor: the same server, its own table, the same durability.
for connections in 4 16; do
  for group in 1 16; do
    build/client/cardvault-pg-anchor \
      --conninfo_file="$CARDVAULT_MULTINODE_DIR/postgres.conninfo" \
      --connections=$connections --group=$group --in_flight=2 \
      --duration_seconds="$seconds" --label=anchor | tee -a "$out"
  done
done

# Bytes per token: every relation of the schema (tables, indexes, TOAST)
# over the tokens stored.
pg_bin=/usr/lib/postgresql/15/bin
conninfo=$(cat "$CARDVAULT_MULTINODE_DIR/postgres.conninfo")
PGPASSFILE=$CARDVAULT_MULTINODE_DIR/pgpass "$pg_bin/psql" -X -q -tA "$conninfo" \
  -c "DROP TABLE IF EXISTS cardvault_anchor" \
  -c "CHECKPOINT" 2>/dev/null || true
PGPASSFILE=$CARDVAULT_MULTINODE_DIR/pgpass "$pg_bin/psql" -X -q -tA "$conninfo" -c "
  SELECT json_build_object('tool', 'pg-bytes-per-token',
    'tokens', (SELECT count(*) FROM tokens),
    'audit_records', (SELECT count(*) FROM audit_records),
    'bytes', sum(pg_total_relation_size(c.oid)),
    'bytes_per_token', round(sum(pg_total_relation_size(c.oid)) /
        greatest((SELECT count(*) FROM tokens), 1)))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = 'public' AND c.relkind = 'r'" | tee -a "$out"
echo "bench-postgres: wrote $out"
