#!/usr/bin/env bash
# Sets up, builds and runs every test (unit, MPI at 1-4 ranks, integration) with ctest.
# Extra arguments go to ctest, e.g. tools/test.sh -L unit or tools/test.sh -R Strategies.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/tools/setup.sh"
"$root/tools/build.sh"
export OMP_NUM_THREADS=1
cd "${LOWSYNC_BUILD_DIR:-$root/build}"
ctest --output-on-failure -j "$(nproc)" "$@"
