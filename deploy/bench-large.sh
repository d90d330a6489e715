#!/usr/bin/env bash
# Memory, disk and start-up with millions of tokens (docs/benchmarks.md):
# bulk-loads a throw-away vault under var/bench-large/ with TokenizeBatch for
# SECONDS, kills it with SIGKILL, times the start, reads for 10 s, stops it
# cleanly and times the start again. Report: var/bench-large/report.txt.
#   deploy/bench-large.sh [SECONDS]   (default 250: about 7-10 M tokens here)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-250}
deploy/install-deps.sh
deploy/build.sh
s=var/bench-large
deploy/bench-state.sh "$s" cardvault-large 127.0.0.1:9557
export SOFTHSM2_CONF=$PWD/$s/softhsm/softhsm2.conf
report=$s/report.txt
start() {  # WHAT
  local t0 t1
  t0=$(date +%s.%N)
  build/server/cardvaultd --config "$s/cardvaultd.textproto" >>"$s/server.log" 2>&1 &
  pid=$!
  until (echo >/dev/tcp/127.0.0.1/9557) 2>/dev/null; do sleep 0.01; done
  t1=$(date +%s.%N)
  echo "start-up: $(echo "$t1 - $t0" | bc) s ($1)" | tee -a "$report"
}
memory() { grep -E 'VmRSS|VmHWM' "/proc/$pid/status" | tr -s ' \t' ' ' | tr '\n' ' '; }
bench() { build/client/cardvault-bench --address=127.0.0.1:9557 --pki_dir="$s/pki" "$@"; }
start "empty vault"
bench --mix=batch --batch_size=1000 --in_flight=8 --channels=4 --pans=100000 \
  --warmup_seconds=0 --duration_seconds="$seconds" | sed -n 2p | tee -a "$report"
echo "after the load: $(memory)" | tee -a "$report"
echo "on disk after the load: $(du -sb "$s/data" | cut -f1) bytes" | tee -a "$report"
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
start "after kill -9 at the end of the load"
bench --mix=detokenize,info --pans=20000 --duration_seconds=10 \
  --warmup_seconds=2 | sed -n 2,3p | tee -a "$report"
echo "after 10 s of reads: $(memory)" | tee -a "$report"
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
echo "on disk after a clean stop: $(du -sb "$s/data" | cut -f1) bytes" | tee -a "$report"
start "after a clean stop"
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
