#!/usr/bin/env bash
# Where the server's CPU goes per call (docs/benchmarks.md): starts a
# throw-away cardvaultd under var/bench-profile/, warms it with Tokenize,
# then for each OP runs cardvault-bench at 4 x 64 for SECONDS and prints the
# server's CPU time per call by thread (from /proc), and, with perf
# installed, the top symbols of the whole server during OP.
#   deploy/bench-profile.sh [SECONDS] [OP...]   (default 5 health tokenize)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}; shift || true
ops=("$@"); ((${#ops[@]})) || ops=(health tokenize)
deploy/install-deps.sh
deploy/build.sh
s=var/bench-profile
deploy/bench-state.sh "$s" cardvault-profile 127.0.0.1:9558
export SOFTHSM2_CONF=$PWD/$s/softhsm/softhsm2.conf
build/server/cardvaultd --config "$s/cardvaultd.textproto" >"$s/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until (echo >/dev/tcp/127.0.0.1/9558) 2>/dev/null; do sleep 0.05; done
bench() {  # OP SECONDS
  build/client/cardvault-bench --address=127.0.0.1:9558 --pki_dir="$s/pki" \
    --mix="$1" --channels=4 --in_flight=64 --warmup_seconds=0 \
    --duration_seconds="$2"
}
ticks() {  # per thread: name tid ticks (user + system, 1/100 s)
  for t in /proc/$pid/task/*; do
    echo "$(tr ' ' _ <"$t/comm") ${t##*/} $(awk '{print $14 + $15}' "$t/stat")"
  done | sort -k2
}
bench tokenize 2 >/dev/null  # tokens to read, and a warm server
for op in "${ops[@]}"; do
  # CPU per call by thread, without perf (whose sampling inflates it).
  before=$(ticks)
  process_before=$(awk '{print $14 + $15}' /proc/$pid/stat)
  result=$(bench "$op" "$seconds" | sed -n 2p)
  after=$(ticks)
  process_after=$(awk '{print $14 + $15}' /proc/$pid/stat)
  calls=$(awk '{print $2 * '"$seconds"'}' <<<"$result")
  echo "== $op: $result"
  # Threads of the same name summed, in microseconds of CPU per call (a
  # thread started during the run counts only in the total).
  join -1 2 -2 2 <(echo "$before") <(echo "$after") |
    awk -v calls="$calls" '{cpu[$2] += $5 - $3}
      END {for (n in cpu) if (cpu[n] > 0)
             printf "  %-16s %6.1f us/call\n", n, cpu[n] * 10000 / calls}' |
    sort -k2 -n -r
  awk -v calls="$calls" -v t=$((process_after - process_before)) \
    'BEGIN {printf "  %-16s %6.1f us/call\n", "server total", t * 10000 / calls}'
  # Then the top symbols of the whole server in a second run, under perf.
  if command -v perf >/dev/null; then
    perf record -q -F 999 -g -p "$pid" -o "$s/perf-$op.data" \
      -- sleep "$seconds" >/dev/null 2>&1 &
    perf_pid=$!
    bench "$op" "$seconds" >/dev/null
    wait "$perf_pid" || true
    perf report -i "$s/perf-$op.data" --no-children --sort dso,sym -g none \
      2>/dev/null | grep -v '^#' | grep -v '^$' | head -15 || true
  fi
done
