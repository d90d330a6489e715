#!/usr/bin/env bash
# Configures and builds cardvault (2 jobs: the machines have 2 cores).
#   BUILD_DIR=build (default) and any extra CMake arguments, e.g.
#   BUILD_DIR=build-asan deploy/build.sh -DCARDVAULT_SANITIZE=address,undefined
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${BUILD_DIR:-build}
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}" "$@" >/dev/null
cmake --build "$dir" -j"${JOBS:-2}"
