#!/usr/bin/env bash
# Memory, disk and start-up with millions of tokens (docs/benchmarks.md):
# bulk-loads a throw-away vault under var/bench-large/ with TokenizeBatch in
# 20 s runs until at least TOKENS are stored, kills it with SIGKILL, times the
# start, reads for 10 s, stops it cleanly, compacts the token data
# (cardvaultd --compact_and_exit) and times the start again.
# Report: var/bench-large/report.txt.
#   deploy/bench-large.sh [TOKENS]   (default 10000000)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-10000000}
deploy/install-deps.sh
deploy/build.sh
s=var/bench-large
deploy/bench-state.sh "$s" cardvault-large 127.0.0.1:9557
export SOFTHSM2_CONF=$PWD/$s/softhsm/softhsm2.conf
report=$s/report.txt
config=(--config "$s/cardvaultd.textproto")
start() {  # WHAT
  local t0 t1
  t0=$(date +%s.%N)
  build/server/cardvaultd "${config[@]}" >>"$s/server.log" 2>&1 &
  pid=$!
  until (echo >/dev/tcp/127.0.0.1/9557) 2>/dev/null; do sleep 0.01; done
  t1=$(date +%s.%N)
  echo "start-up: $(echo "$t1 - $t0" | bc) s ($1)" | tee -a "$report"
}
stop() { kill "-$1" "$pid"; wait "$pid" 2>/dev/null || true; }
memory() { grep -E 'VmRSS|VmHWM' "/proc/$pid/status" | tr -s ' \t' ' ' | tr '\n' ' '; }
disk() {  # WHEN
  local bytes
  bytes=$(du -sb "$s/data" | cut -f1)
  echo "on disk $1: $bytes bytes, $(echo "scale=1; $bytes / $stored" | bc) B/token" |
    tee -a "$report"
}
bench() { build/client/cardvault-bench --address=127.0.0.1:9557 --pki_dir="$s/pki" "$@"; }
start "empty vault"
# Calls still in flight when a run ends are not counted: at least `stored`.
stored=0
load_start=$(date +%s.%N)
while ((stored < target)); do
  out=$(bench --mix=batch --batch_size=1000 --in_flight=8 --channels=4 \
    --pans=100000 --warmup_seconds=0 --duration_seconds=20)
  if grep -q '"errors":{}' <<<"$out"; then :; else
    echo "errors in the load: $out" | tee -a "$report"
    exit 1
  fi
  calls=$(grep -o '"calls":[0-9]*' <<<"$out" | cut -d: -f2)
  stored=$((stored + calls * 1000))
done
load_seconds=$(echo "$(date +%s.%N) - $load_start" | bc)
echo "loaded: $stored tokens in $load_seconds s" \
  "($(echo "$stored / $load_seconds" | bc) tokens/s)" | tee -a "$report"
echo "after the load: $(memory)" | tee -a "$report"
disk "after the load"
stop 9
start "after kill -9 at the end of the load"
bench --mix=detokenize,info --pans=20000 --duration_seconds=10 \
  --warmup_seconds=2 | sed -n 2,3p | tee -a "$report"
echo "after 10 s of reads: $(memory)" | tee -a "$report"
stop TERM
disk "after a clean stop"
t0=$(date +%s.%N)
build/server/cardvaultd "${config[@]}" --compact_and_exit >>"$s/server.log" 2>&1
echo "full compaction of the token data: $(echo "$(date +%s.%N) - $t0" | bc) s" |
  tee -a "$report"
disk "after the compaction"
start "after the compaction"
stop TERM
