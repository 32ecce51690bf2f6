#!/usr/bin/env bash
# Speed check of a refactor (issue #17: no regression beyond 3%): an old and a new build side by
# side on one machine, interleaved, ratios within the run.
#   tools/bench/redesign_speed.sh OLD_BUILD_DIR NEW_BUILD_DIR [repeats]
# Each repeat runs bench_step's MLP step (one rank, Google Benchmark) and a 4-rank periodic run
# (MLP, period 8, 300 steps) with each build, alternating which goes first, and prints
# new/old samples/s per repeat and the median.
set -euo pipefail
old="${1:?usage: redesign_speed.sh OLD_BUILD_DIR NEW_BUILD_DIR [repeats]}"
new="${2:?usage: redesign_speed.sh OLD_BUILD_DIR NEW_BUILD_DIR [repeats]}"
repeats="${3:-3}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step_rate() {  # build -> MLP samples/s of bench_step
  "$1/bin/bench_step" --benchmark_filter='bm_train_step/mlp' --benchmark_format=json 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; b=json.load(sys.stdin)["benchmarks"][0]; print(b["samples_per_s"] if "samples_per_s" in b else b["items_per_second"])'
}
periodic_rate() {  # build -> samples/s of a 4-rank periodic run
  local out="$tmp/run.$RANDOM"
  mpirun -q --oversubscribe -n 4 "$1/bin/lowsync" train --set sync.strategy=periodic --set sync.period=8 \
    --set train.steps=300 --set eval.every=0 --set log.progress=off --out "$out" >/dev/null 2>&1
  /usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["samples_per_s"])' "$out/summary.json"
}

for what in step_rate periodic_rate; do
  ratios=()
  for ((i = 0; i < repeats; i++)); do
    if ((i % 2 == 0)); then a=$($what "$old"); b=$($what "$new"); else b=$($what "$new"); a=$($what "$old"); fi
    ratios+=("$(/usr/bin/python3 -c "print(f'{$b / $a:.3f}')")")
    echo "$what repeat $((i + 1)): old $a new $b ratio $b/$a = ${ratios[-1]}"
  done
  echo "$what: median new/old = $(printf '%s\n' "${ratios[@]}" | sort -n | sed -n "$(((repeats + 1) / 2))p")"
done
