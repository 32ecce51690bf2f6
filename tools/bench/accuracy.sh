#!/usr/bin/env bash
# The foundation's accuracy workloads on one rank: MLP and CNN, 2,000 steps at batch 64, SGD lr
# 0.05, test set evaluated every 250 steps; prints final and best test accuracy per seed.
# usage: tools/bench/accuracy.sh [SEEDS...]   (default: 1 2 3)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
lowsync="${LOWSYNC:-$root/build/bin/lowsync}"
out="${OUT:-$(mktemp -d)}"
seeds=("${@:-1 2 3}")
export OMP_NUM_THREADS=1
printf "%-5s %5s %10s %10s %12s %8s\n" arch seed final_acc best_acc samples_per_s wall_s
for arch in mlp cnn; do
  for seed in ${seeds[@]}; do
    dir="$out/$arch-$seed"
    "$lowsync" train --set model.arch=$arch --set train.seed=$seed --set train.steps=2000 --set optim.lr=0.05 \
      --set eval.every=250 --set log.progress=off --force --out "$dir" 2>/dev/null
    /usr/bin/python3 - "$dir" "$arch" "$seed" <<'PY'
import csv, json, sys
d, arch, seed = sys.argv[1:]
s = json.load(open(f"{d}/summary.json"))
accs = [float(r["test_acc"]) for r in csv.DictReader(open(f"{d}/metrics.csv")) if r["test_acc"]]
print(f"{arch:<5} {seed:>5} {s['final_test_accuracy']:>10.4f} {max(accs):>10.4f} {s['samples_per_s']:>12.0f} {s['wall_s']:>8.1f}")
PY
  done
done
