#!/usr/bin/env bash
# Makes a throw-away vault state for benchmarks: SoftHSM2 token, PKI, config
# and policy under DIR, the detokenizer without the dev policy's rate limit.
#   deploy/bench-state.sh DIR TOKEN_LABEL LISTEN_ADDRESS
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?}; label=${2:?}; listen=${3:?}
rm -rf "$dir"; mkdir -p "$dir"
deploy/init-softhsm.sh "$dir/softhsm" "$label" >/dev/null
deploy/make-pki.sh "$dir/pki" "$dir/ca" >/dev/null
deploy/write-config.sh "$dir" "$label" "$listen" "$dir/cardvaultd.textproto" >/dev/null
sed -i '/detokenize_limit/d' "$dir/policy.textproto"
