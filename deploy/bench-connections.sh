#!/usr/bin/env bash
# Reproduces the connection figures of docs/benchmarks.md (issue 22): memory
# per pending handshake and per idle mutual-TLS connection, connections
# admitted from one address before refusal, time to serve again after a
# flood, and Tokenize/Detokenize at 1 channel x 64 in flight with and
# without 10,000 idle connections held. Run as root (needs 127.0.0.0/8
# source addresses and a high descriptor limit).
#   deploy/bench-connections.sh [SECONDS_PER_RUN]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
deploy/build.sh >/dev/null
state=var/bench-connections
port=9556
deploy/bench-state.sh "$state" cardvault-benchconn 127.0.0.1:$port
export SOFTHSM2_CONF=$PWD/$state/softhsm/softhsm2.conf
# Idle connections are the subject here: keep them for the whole run.
sed -i 's/^listener {/listener {\n  max_connections_per_source: 4000/' "$state/cardvaultd.textproto"
cat >>"$state/cardvaultd.textproto" <<'CONF'
limits { max_connection_idle_seconds: 3600 max_connection_age_seconds: 3600 }
CONF
sed -i 's/^metrics {/metrics {\n  interval_seconds: 1/' "$state/cardvaultd.textproto"
ulimit -n "$(ulimit -Hn)"
build/server/cardvaultd --config "$state/cardvaultd.textproto" >"$state/server.log" 2>&1 &
pid=$!
holder=
trap 'kill $pid $holder 2>/dev/null || true' EXIT
until grep -q "cardvaultd ready" "$state/server.log"; do sleep 0.2; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
metric() { awk -v n="$1" '$1 == n {print $2}' "$state/cardvault.prom"; }
hold() {  # hold ARGS... : starts the holder, waits for "holding N"
  python3 deploy/hold-connections.py --port $port --pki "$state/pki" "$@" \
    >"$state/holder.out" 2>/dev/null &
  holder=$!
  until grep -q holding "$state/holder.out" 2>/dev/null; do sleep 0.2; done
  sleep 1
}
release() { kill "$holder"; wait "$holder" 2>/dev/null || true; holder=; sleep 6; }
bench() {  # LABEL OP
  build/client/cardvault-bench --address=127.0.0.1:$port --pki_dir="$state/pki" \
    --duration_seconds="$seconds" --warmup_seconds=2 --channels=1 \
    --in_flight=64 --mix="$2" --label="$1" | tail -n 1
}
echo "baseline resident: $(rss) KiB, descriptors budget: $(grep -o 'descriptors=[^ ]* reserved=[^ ]* connections=[0-9]*' "$state/server.log")"
for op in health tokenize detokenize; do bench "no idle connections" $op; done

base=$(rss)
hold --count 4000 --sources 4
echo "4000 TCP connections, nothing sent (within the handshake deadline): resident $base -> $(rss) KiB, pending $(metric cardvault_connections_pending)"
release

base=$(rss)
hold --count 10000 --sources 5 --tls
echo "$(cat "$state/holder.out") idle mutual-TLS connections: resident $base -> $(rss) KiB, open $(metric cardvault_connections_open)"
for op in health tokenize detokenize; do bench "10000 idle connections held" $op; done
release
echo "after release: resident $(rss) KiB, open $(metric cardvault_connections_open)"

limit=$(grep -o 'max_connections=[0-9]*' "$state/server.log" | head -1 | cut -d= -f2)
total_before=$(metric cardvault_connections_refused_total)
hold --count $((limit + 600)) --sources 6 --tls
echo "$(cat "$state/holder.out") of $((limit + 600)) mutual-TLS connections held with max_connections=$limit: resident $(rss) KiB, refused for the total $(( $(metric cardvault_connections_refused_total) - total_before ))"
release

before=$(metric cardvault_connections_admitted_total)
rate_before=$(metric cardvault_connections_refused_rate_total)
source_before=$(metric cardvault_connections_refused_per_source_total)
hold --count 6000 --sources 1
echo "one address, 6000 TCP connections at once: admitted $(( $(metric cardvault_connections_admitted_total) - before )), refused for the rate $(( $(metric cardvault_connections_refused_rate_total) - rate_before )), per source $(( $(metric cardvault_connections_refused_per_source_total) - source_before ))"
kill "$holder"; wait "$holder" 2>/dev/null || true; holder=
start=$(date +%s%N)
until echo 4111111111111111 | build/client/cardvault tokenize \
    --address=127.0.0.1:$port --pki_dir="$state/pki" >/dev/null 2>&1; do
  sleep 0.05
done
echo "served again $(( ($(date +%s%N) - start) / 1000000 )) ms after the flood ended"
echo "server log ALERT lines: $(grep -c ALERT "$state/server.log" || true)"
