#!/usr/bin/env bash
# Installs packages, builds, and runs every test with ctest. Tests make their
# own SoftHSM2 tokens, PKI and servers in temporary directories.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
deploy/build.sh
cd build
ctest --output-on-failure --timeout 600 "$@"
