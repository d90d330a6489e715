#!/usr/bin/env bash
# Installs packages, builds, and runs every test with ctest; then builds the
# same suite with AddressSanitizer and UndefinedBehaviorSanitizer and runs it
# again. Tests make their own SoftHSM2 tokens, PKI and servers in temporary
# directories. Set CARDVAULT_SKIP_SANITIZERS=1 for the plain run only.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
deploy/build.sh
(cd build && ctest --output-on-failure --timeout 600 "$@")
if [[ -z "${CARDVAULT_SKIP_SANITIZERS:-}" ]]; then
  echo "== the same tests under ASan + UBSan =="
  BUILD_DIR=build-asan deploy/build.sh -DCARDVAULT_SANITIZE=address,undefined
  (cd build-asan && ctest --output-on-failure --timeout 600 "$@")
fi
