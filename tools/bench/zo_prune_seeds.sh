#!/usr/bin/env bash
# Low-memory training over seeds (issue #22, ALGORITHMS.md §2): Fashion-MNIST MLP, RANKS ranks,
# Dirichlet(ALPHA), batch BATCH per rank, STEPS steps with the test set evaluated every EVAL_EVERY
# steps, seeds SEEDS: dense backprop, dense ZO, ZO after NTK pruning (faithful global ranking and
# the variants: ntk_layer = prune.ntk.normalize = layer, ntk_train = layer + prune.ntk.init = train),
# magnitude and random pruning at SPARSITY.
# Prints, per row and evaluated step, test accuracy mean [min, max] over seeds, then
# train_state_bytes (max over ranks) vs dense BP and per-tensor density.
#   usage: tools/bench/zo_prune_seeds.sh [LOWSYNC_BINARY] [OUT_DIR]
#   env:   RANKS=4 STEPS=1000 EVAL_EVERY=300 SEEDS="1 2 3" BATCH=32 Q=16 SPARSITY=0.9 ALPHA=0.5
#          ROWS="dense_bp dense_zo ntk_none ntk_layer ntk_train magnitude random" ZO_LR=0.01 BP_LR=0.05
#          PARALLEL=1 (runs at once; RANKS*PARALLEL cores) DATA=/usr/share/datasets/fashion-mnist
# A finished run (summary.json present) is not repeated, so an interrupted table resumes.
set -euo pipefail
BIN=${1:-build/bin/lowsync}
OUT=${2:-/tmp/lowsync_zo_seeds}
RANKS=${RANKS:-4} STEPS=${STEPS:-1000} EVAL_EVERY=${EVAL_EVERY:-300} SEEDS=${SEEDS:-"1 2 3"} BATCH=${BATCH:-32}
Q=${Q:-16} SPARSITY=${SPARSITY:-0.9} ALPHA=${ALPHA:-0.5} PARALLEL=${PARALLEL:-1} ZO_LR=${ZO_LR:-0.01}
BP_LR=${BP_LR:-0.05} DATA=${DATA:-/usr/share/datasets/fashion-mnist}
ROWS=${ROWS:-"dense_bp dense_zo ntk_none ntk_layer ntk_train magnitude random"}
mkdir -p "$OUT"
zo="--set optim.name=zo --set optim.zo.q=$Q --set optim.zo.update=adam --set optim.lr=$ZO_LR --set optim.zo.form=fedsgd --set prune.sparsity=$SPARSITY"
args_of() {
  case $1 in
    dense_bp) echo "--set optim.name=sgd --set optim.lr=$BP_LR --set sync.strategy=allreduce" ;;
    dense_zo) echo "$zo --set prune.method=none" ;;
    ntk_none) echo "$zo --set prune.method=ntk --set prune.ntk.normalize=none --set prune.ntk.init=fresh" ;;
    ntk_mean) echo "$zo --set prune.method=ntk --set prune.ntk.normalize=mean" ;;
    ntk_layer) echo "$zo --set prune.method=ntk --set prune.ntk.normalize=layer --set prune.ntk.init=fresh" ;;
    ntk_unit) echo "$zo --set prune.method=ntk --set prune.ntk.normalize=unit --set prune.ntk.init=fresh" ;;
    ntk_train) echo "$zo --set prune.method=ntk --set prune.ntk.normalize=layer --set prune.ntk.init=train" ;;
    ntk_none_train) echo "$zo --set prune.method=ntk --set prune.ntk.normalize=none --set prune.ntk.init=train" ;;
    magnitude) echo "$zo --set prune.method=magnitude" ;;
    random) echo "$zo --set prune.method=random" ;;
    *) echo "unknown row $1" >&2; exit 2 ;;
  esac
}
run() {  # row seed
  local dir="$OUT/$1.s$2"
  [ -f "$dir/summary.json" ] && return 0
  # shellcheck disable=SC2046
  OMP_NUM_THREADS=1 nice mpirun --allow-run-as-root --oversubscribe --bind-to none -n "$RANKS" "$BIN" train \
    --set data.dir="$DATA" --set data.partition=dirichlet --set data.alpha="$ALPHA" --set train.steps="$STEPS" \
    --set train.batch="$BATCH" --set eval.every="$EVAL_EVERY" --set log.every=50 --set log.progress=off \
    --set train.seed="$2" $(args_of "$1") --out "$dir" >"$dir.log" 2>&1 || { echo "run $1 seed $2 failed:"; tail -3 "$dir.log"; }
}
running=0
for seed in $SEEDS; do
  for row in $ROWS; do
    run "$row" "$seed" &
    running=$((running + 1))
    if [ "$running" -ge "$PARALLEL" ]; then wait -n || true; running=$((running - 1)); fi
  done
done
wait
/usr/bin/python3 - "$OUT" "$ROWS" "$SEEDS" <<'PY'
import csv, json, os, sys
out, rows, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def load(row, seed):
    d = f"{out}/{row}.s{seed}"
    if not os.path.exists(f"{d}/summary.json"): return None
    acc = {int(float(r["step"])): float(r["test_acc"]) for r in csv.DictReader(open(f"{d}/metrics.csv")) if r["test_acc"] not in ("", "nan")}
    return json.load(open(f"{d}/summary.json")), acc
runs = {r: [x for x in (load(r, s) for s in seeds) if x] for r in rows}
steps = sorted({st for rs in runs.values() for _, acc in rs for st in acc})
bp = [s["train_state_bytes"] for s, _ in runs.get("dense_bp", [])]
print("| row | seeds | " + " | ".join(f"test acc @{st}" for st in steps) + " | train_state_bytes | vs dense BP | density fc1.w / fc1.b / fc2.w / fc2.b / fc3.w / fc3.b |")
print("|---|---|" + "---|" * len(steps) + "---|---|---|")
for r in rows:
    rs = runs[r]
    if not rs: continue
    cells = []
    for st in steps:
        v = [acc[st] for _, acc in rs if st in acc]
        cells.append(f"{sum(v)/len(v):.4f} [{min(v):.4f}, {max(v):.4f}]" if v else "-")
    s0 = rs[0][0]
    tsb = max(s["train_state_bytes"] for s, _ in rs)
    dens = " / ".join(f"{l['density']:.3f}" for l in s0.get("prune_layers", [])) or "1 (dense)"
    ratio = f"{tsb / max(bp):.3f}" if bp else "-"
    print(f"| {r} | {len(rs)} | " + " | ".join(cells) + f" | {tsb/1e6:.3f} MB | {ratio} | {dens} |")
PY
