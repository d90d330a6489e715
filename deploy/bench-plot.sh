#!/usr/bin/env bash
# Plots throughput and p99 latency against calls in flight, per op and mode,
# from the sweep lines of a results.tsv written by cardvault-bench
# --tsv_out (label, op, channels, in_flight, calls/s, items/s, p50, p99,
# errors).
#   deploy/bench-plot.sh RESULTS_TSV OUT_PNG
set -euo pipefail
tsv=${1:?}; png=${2:?}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
series=()
while IFS=$'\t' read -r label op _ inflight cps _ _ p99 _; do
  [[ $label == *-sweep ]] || continue
  name="${label%-sweep} $op"
  file="$tmp/${name// /_}.dat"
  [[ -f $file ]] || series+=("$name")
  printf '%s\t%s\t%s\n' "$inflight" "$cps" "$p99" >>"$file"
done <"$tsv"
plot_rps=(); plot_p99=()
for name in "${series[@]}"; do
  file="$tmp/${name// /_}.dat"
  plot_rps+=("'$file' using 1:2 with linespoints title '$name'")
  plot_p99+=("'$file' using 1:(\$3/1000) with linespoints title '$name'")
done
join() { local IFS=','; echo "$*"; }
gnuplot <<GP
set terminal png size 1200,500 noenhanced
set output '$png'
set multiplot layout 1,2
set logscale x 2
set xlabel 'calls in flight (4 channels)'
set key left top
set ylabel 'calls per second'
set title 'Throughput'
plot $(join "${plot_rps[@]}")
set ylabel 'p99 latency, ms'
set title 'p99 latency'
plot $(join "${plot_p99[@]}")
unset multiplot
GP
