#!/usr/bin/env bash
# Reproduces docs/benchmarks.md: builds, makes a throw-away vault under
# var/bench/ (SoftHSM2 token, PKI, config; the detokenizer without the dev
# rate limit), and for each mode (default, direct-HSM) starts cardvaultd and
# runs cardvault-bench: every op at 4 channels x 64 in flight beside the
# health baseline (three rounds), a sweep of in-flight counts, and the
# TokenizeBatch bulk load last. Results go to
# docs/bench/results.jsonl (JSON lines) and results.tsv, the plot (made by
# deploy/bench-plot.sh with gnuplot) to docs/bench/throughput.png.
#   deploy/bench.sh [SECONDS_PER_RUN]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
deploy/install-deps.sh
if ! command -v gnuplot >/dev/null; then
  apt-get install -y --no-install-recommends gnuplot-nox >/dev/null
fi
deploy/build.sh
state=var/bench
out=docs/bench
deploy/bench-state.sh "$state" cardvault-bench 127.0.0.1:9555
mkdir -p "$out"
export SOFTHSM2_CONF=$PWD/$state/softhsm/softhsm2.conf
results=$out/results.jsonl
tsv=$out/results.tsv
: >"$results"
: >"$tsv"
bench() {  # LABEL ARGS...
  local label=$1; shift
  build/client/cardvault-bench --address=127.0.0.1:9555 \
    --pki_dir="$state/pki" --duration_seconds="$seconds" --warmup_seconds=2 \
    --label="$label" --tsv_out="$tsv" "$@" | tee /dev/stderr |
    tail -n 1 >>"$results" || true
}
for mode in default direct_hsm; do
  config=$state/cardvaultd-$mode.textproto
  cp "$state/cardvaultd.textproto" "$config"
  if [[ $mode == direct_hsm ]]; then
    sed -i 's/^hsm {/hsm {\n  seal_in_hsm: true/' "$config"
  fi
  rm -rf "$state/data"
  build/server/cardvaultd --config "$config" >"$state/server-$mode.log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  for _ in $(seq 50); do
    (echo >/dev/tcp/127.0.0.1/9555) 2>/dev/null && break
    sleep 0.2
  done
  # Three rounds, each op beside its own health baseline: this shared
  # machine varies by 10-30 % from one run to the next (docs/benchmarks.md
  # reports the median round).
  for round in 1 2 3; do
    for op in health tokenize detokenize info; do
      bench "$mode" --mix=$op --channels=4 --in_flight=64
    done
  done
  for inflight in 1 4 16 64 128; do
    for op in health tokenize detokenize; do
      bench "$mode-sweep" --mix=$op --channels=4 --in_flight=$inflight
    done
  done
  # Last: the bulk load leaves flushes and compactions running behind it.
  bench "$mode" --mix=batch --batch_size=1000 --channels=4 --in_flight=8 \
    --pans=100000
  echo "bench: $mode RSS $(grep VmHWM /proc/$pid/status)" | tee -a "$out/memory.txt"
  kill $pid; wait $pid || true
done
deploy/bench-plot.sh "$tsv" "$out/throughput.png"
echo "bench: wrote $results, $tsv and $out/throughput.png"
