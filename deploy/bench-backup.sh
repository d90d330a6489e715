#!/usr/bin/env bash
# Backup and restore figures (docs/benchmarks.md, Backups): bulk-loads a
# throw-away vault under var/bench-backup/ to TOKENS with TokenizeBatch, then
# times a full backup, Tokenize throughput with and without backups running
# back to back, an incremental backup after 100,000 more tokens, verification
# (a sample, then every record), and a restore of the last backup with the
# vault stopped (the RTO of a disk loss: restore plus start).
# Report: var/bench-backup/report.txt.
#   deploy/bench-backup.sh [TOKENS]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-1000000}
deploy/install-deps.sh
deploy/build.sh
s=var/bench-backup
addr=127.0.0.1:9559
deploy/bench-state.sh "$s" cardvault-backup "$addr"
export SOFTHSM2_CONF=$PWD/$s/softhsm/softhsm2.conf
report=$s/report.txt
config=(--config "$s/cardvaultd.textproto")
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
start() {
  build/server/cardvaultd "${config[@]}" >>"$s/server.log" 2>&1 &
  pid=$!
  until (echo >/dev/tcp/127.0.0.1/9559) 2>/dev/null; do sleep 0.01; done
}
stop() { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; }
bench() { build/client/cardvault-bench --address=$addr --pki_dir="$s/pki" "$@"; }
cli() {
  build/client/cardvault --address=$addr --pki_dir="$s/pki" \
    --deadline_ms=3600000 "$@"
}
field() { grep -o "\"$1\":\"*[0-9]*" | head -1 | grep -o '[0-9]*$'; }
load() {  # TOKENS [SECONDS per run]
  local stored=0 out calls
  while ((stored < $1)); do
    out=$(bench --mix=batch --batch_size=1000 --in_flight=8 --channels=4 \
      --pans=100000 --warmup_seconds=0 --duration_seconds="${2:-10}")
    grep -q '"errors":{}' <<<"$out" || { echo "load errors: $out"; exit 1; }
    calls=$(grep -o '"calls":[0-9]*' <<<"$out" | cut -d: -f2)
    stored=$((stored + calls * 1000))
  done
}
backup() {  # WHAT
  local t0 out
  t0=$(now)
  out=$(cli backup create | head -1)
  echo "$1: $(since "$t0") s; tokens $(field tokens <<<"$out")," \
    "size $(field size_bytes <<<"$out") bytes in $(field files <<<"$out")" \
    "files, new $(field new_bytes <<<"$out") bytes" | tee -a "$report"
  last=$(field id <<<"$out")
}
: >"$report"
echo "cardvault backup figures, $(date -u +%FT%TZ), $(nproc) cores" | tee -a "$report"
start
t0=$(now)
load "$target"
echo "loaded at least $target tokens in $(since "$t0") s" | tee -a "$report"
backup "first (full) backup"
echo "data directory: $(du -sb "$s/data" | cut -f1) bytes; backup directory:" \
  "$(du -sb "$s/backups" | cut -f1) bytes" | tee -a "$report"
# Throughput of single Tokenize calls, alone and beside backups taken back
# to back (each one a checkpoint, a scan for the manifest and new files).
alone=$(bench --mix=tokenize --channels=4 --in_flight=64 --duration_seconds=15 \
  | field calls_per_second)
( while [[ ! -e "$s/stop-backups" ]]; do cli backup create >/dev/null || true; done ) &
loop=$!
beside=$(bench --mix=tokenize --channels=4 --in_flight=64 --duration_seconds=15 \
  | field calls_per_second)
touch "$s/stop-backups"; wait "$loop"; rm -f "$s/stop-backups"
echo "Tokenize 4x64: $alone calls/s alone, $beside calls/s beside back-to-back" \
  "backups" | tee -a "$report"
backup "backup after the throughput runs (the base of the next)"
load 100000 1
backup "incremental backup after 100,000 more tokens"
t0=$(now); cli backup verify "$last" >/dev/null
echo "verify (1,000-record sample, chain, files): $(since "$t0") s" | tee -a "$report"
t0=$(now); cli backup verify --all_records "$last" >/dev/null
echo "verify (every record): $(since "$t0") s" | tee -a "$report"
stop
t0=$(now)
build/server/cardvaultd "${config[@]}" --restore_backup="$last" >>"$s/server.log" 2>&1
restored=$(since "$t0")
t0=$(now); start; started=$(since "$t0")
echo "restore of backup $last: $restored s, then start-up $started s (RTO of a" \
  "lost data directory, HSM intact)" | tee -a "$report"
stop
echo "RPO: the backup interval (backup.interval_seconds, 3600 in the quickstart)" \
  "plus one backup's duration" | tee -a "$report"
