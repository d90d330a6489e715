#!/usr/bin/env bash
# Installs packages, builds, and runs every test with ctest; then builds the
# same suite with AddressSanitizer and UndefinedBehaviorSanitizer and runs it
# again. Tests make their own SoftHSM2 tokens, PKI and servers in temporary
# directories. Set CARDVAULT_SKIP_SANITIZERS=1 for the plain run only.
# Tests run three at a time (CTEST_PARALLEL_LEVEL to change it): most of their
# time is spent waiting on servers, fsyncs and timers, not on the two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
deploy/build.sh
jobs=${CTEST_PARALLEL_LEVEL:-3}
(cd build && ctest --output-on-failure --timeout 600 -j"$jobs" "$@")
if [[ -z "${CARDVAULT_SKIP_SANITIZERS:-}" ]]; then
  echo "== the same tests under ASan + UBSan =="
  BUILD_DIR=build-asan deploy/build.sh -DCARDVAULT_SANITIZE=address,undefined
  (cd build-asan && ctest --output-on-failure --timeout 600 -j"$jobs" "$@")
fi
