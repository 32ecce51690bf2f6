#!/usr/bin/env bash
# The gpt comparison of issue #23: 4 ranks, by_source partition (alpha 0.3), every strategy at its
# defaults (periodic H = 10, DiLoCo H = 50, Streaming DiLoCo H = 50 with F = 4 fragments), one
# seed (SEED, default 1); prints one markdown row per strategy: validation loss, bits per byte, MB
# sent per rank, syncs, the largest single sync (DiLoCo rows: diloco_max_sync_bytes), wall seconds.
# ROWS (space-separated names) runs a subset.
#   tools/bench/gpt_compare.sh [OUT_DIR]     (STEPS=300 by default; the issue asks for 1,000)
# Evaluates every 50 steps so `lowsync compare OUT_DIR/*` draws curves, not one point per run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${1:-$root/runs/gpt_compare}"
steps="${STEPS:-300}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
rows=("none:sync.strategy=none" "allreduce:sync.strategy=allreduce" "periodic:sync.strategy=periodic sync.period=10"
      "fda:sync.strategy=fda" "demo:sync.strategy=demo" "diloco:sync.strategy=diloco sync.period=50"
      "streaming:sync.strategy=diloco sync.period=50 sync.diloco.fragments=4" "powersgd:sync.strategy=powersgd")
mkdir -p "$out"
seed="${SEED:-1}"
echo "| row | val loss (nats/byte) | bits/byte | MB sent per rank | syncs | largest sync MB | wall s |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for row in "${rows[@]}"; do
  name=${row%%:*}
  [[ -n ${ROWS:-} && " $ROWS " != *" $name "* ]] && continue
  sets=()
  for kv in ${row#*:} model.arch=gpt data.partition=by_source data.alpha=0.3 train.steps="$steps" train.seed="$seed" eval.every=50 log.progress=off; do
    sets+=(--set "$kv")
  done
  if ! mpirun -q --oversubscribe -n 4 "$root/build/bin/lowsync" train "${sets[@]}" --force --out "$out/$name" >"$out/$name.log" 2>&1; then
    echo "gpt_compare: $name failed; see $out/$name.log" >&2
    continue
  fi
  /usr/bin/python3 - "$name" "$out/$name" <<'PY'
import csv, json, sys
s = json.load(open(f"{sys.argv[2]}/summary.json"))
with open(f"{sys.argv[2]}/metrics.csv") as f:
    peak = [float(r["diloco_max_sync_bytes"]) for r in csv.DictReader(f) if r.get("diloco_max_sync_bytes")]
largest = f"{max(peak) / 1e6:.2f}" if peak else "-"
print(f"| {sys.argv[1]} | {s['final_val_loss']:.4f} | {s['final_val_bits_per_byte']:.3f} | "
      f"{s['bytes_sent_per_rank'] / 1e6:.1f} | {s.get('syncs')} | {largest} | {s['wall_s']:.0f} |")
PY
done
