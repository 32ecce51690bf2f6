#!/usr/bin/env bash
# Configures and builds lowsync (Release, -O3 -march=native) into build/; binary: build/bin/lowsync.
# Extra arguments go to the CMake configure step, e.g. tools/build.sh -DLOWSYNC_BUILD_BENCHMARKS=ON.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${LOWSYNC_BUILD_DIR:-$root/build}"
jobs="${LOWSYNC_JOBS:-$(nproc)}"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$build" -j "$jobs"
echo "build: $build/bin/lowsync"
