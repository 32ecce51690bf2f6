#!/usr/bin/env bash
# Low-memory training table (issue: NTK foresight pruning + zeroth-order updates, ALGORITHMS.md §2):
# Fashion-MNIST MLP, RANKS ranks, Dirichlet(ALPHA) partition, batch BATCH per rank, STEPS steps:
# dense backprop SGD, dense ZO, and ZO after ntk / magnitude / random pruning at SPARSITY.
# Prints a markdown table: test accuracy, training FLOPs per step per rank, bytes sent per rank,
# train_state_bytes and peak RSS of one worker (maxima over ranks). Byte counts and accuracy do
# not depend on machine load; FLOPs are counted, not timed.
#   usage: tools/bench/zo_prune_table.sh [LOWSYNC_BINARY] [OUT_DIR]
#   env:   RANKS=4 STEPS=300 BATCH=32 Q=16 SPARSITY=0.9 ALPHA=0.5 DATA=/usr/share/datasets/fashion-mnist
#          DENSE_ZO_STEPS=STEPS ZO_LR=0.01 BP_LR=0.05 LIMIT=0 (data.train_limit)
#          PARALLEL=1 (runs at once; use >1 only with enough cores: RANKS*PARALLEL)
set -euo pipefail
BIN=${1:-build/bin/lowsync}
OUT=${2:-/tmp/lowsync_zo_table}
RANKS=${RANKS:-4} STEPS=${STEPS:-300} BATCH=${BATCH:-32} Q=${Q:-16} SPARSITY=${SPARSITY:-0.9}
ALPHA=${ALPHA:-0.5} DATA=${DATA:-/usr/share/datasets/fashion-mnist} PARALLEL=${PARALLEL:-1}
ZO_LR=${ZO_LR:-0.01} BP_LR=${BP_LR:-0.05} LIMIT=${LIMIT:-0}
DENSE_ZO_STEPS=${DENSE_ZO_STEPS:-$STEPS}  # dense ZO costs ~1/density times a pruned step: allow fewer
mkdir -p "$OUT"
common=(--set data.dir="$DATA" --set data.partition=dirichlet --set data.alpha="$ALPHA" --set data.train_limit="$LIMIT"
        --set train.steps="$STEPS" --set train.batch="$BATCH" --set eval.every=0 --set log.every=50
        --set log.progress=lines --set train.seed=1)
zo=(--set optim.name=zo --set optim.zo.q="$Q" --set optim.zo.update=adam --set optim.lr="$ZO_LR"
    --set optim.zo.form=fedsgd --set prune.sparsity="$SPARSITY")
run() {  # name, extra args...
  local name=$1; shift
  OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none -n "$RANKS" \
    "$BIN" train "${common[@]}" "$@" --force --out "$OUT/$name" > "$OUT/$name.log" 2>&1 || { echo "run $name failed:"; tail "$OUT/$name.log"; exit 1; }
}
jobs_list=(
  "dense_bp --set optim.name=sgd --set optim.lr=$BP_LR --set sync.strategy=allreduce"
  "dense_zo ${zo[*]} --set prune.method=none --set train.steps=$DENSE_ZO_STEPS"
  "ntk_zo ${zo[*]} --set prune.method=ntk"
  "magnitude_zo ${zo[*]} --set prune.method=magnitude"
  "random_zo ${zo[*]} --set prune.method=random"
)
running=0
for j in "${jobs_list[@]}"; do
  # shellcheck disable=SC2086
  run $j &
  running=$((running + 1))
  if [ "$running" -ge "$PARALLEL" ]; then wait -n; running=$((running - 1)); fi
done
wait
/usr/bin/python3 - "$OUT" "$BATCH" <<'PY'
import json, sys
out, batch = sys.argv[1], int(sys.argv[2])
rows = [("dense_bp", "dense backprop (SGD, allreduce)"), ("dense_zo", "dense ZO (FedSGD)"),
        ("ntk_zo", "NTK-pruned ZO"), ("magnitude_zo", "magnitude-pruned ZO"), ("random_zo", "random-pruned ZO")]
s = {k: json.load(open(f"{out}/{k}/summary.json")) for k, _ in rows}
bp_state = s["dense_bp"]["train_state_bytes"]
print(f"| run | kept params | steps | test acc | train FLOPs/step/rank | bytes sent/rank/step (training) | bytes sent/rank (pruning) | train_state_bytes | vs dense BP | peak RSS |")
print("|---|---|---|---|---|---|---|---|---|---|")
for k, label in rows:
    j = s[k]
    # Backprop: forward + backward ~ 3 forwards; ZO: (q+1) forwards on the kept weights.
    flops = j.get("train_flops_per_step", 3.0 * j["forward_flops_per_sample"] * batch)
    kept = j.get("kept_params", j["num_params"])
    # bytes_by_traffic is the rank-0 ledger (wire bytes): pruning's "prune" class apart from training.
    traffic = j["bytes_by_traffic"]
    prune_b = traffic.get("prune", 0.0)
    train_b = sum(v for t, v in traffic.items() if t != "prune") / j["steps"]
    print(f"| {label} | {kept} | {j['steps']} | {j['final_test_accuracy']:.4f} | {flops/1e6:.1f} M | {train_b:.0f} B | {prune_b/1e6:.2f} MB | "
          f"{j['train_state_bytes']/1e6:.3f} MB | {j['train_state_bytes']/bp_state:.3f} | {j['peak_rss_bytes']/1e6:.1f} MB |")
ntk, rnd = s["ntk_zo"]["final_test_accuracy"], s["random_zo"]["final_test_accuracy"]
ratio = s["ntk_zo"]["train_state_bytes"] / bp_state
print(f"\ntargets: pruned-ZO train_state_bytes <= 1/10 of dense BP: {ratio:.3f} ({'met' if ratio <= 0.1 else 'MISSED'}); "
      f"NTK >= random accuracy: {ntk:.4f} vs {rnd:.4f} ({'met' if ntk >= rnd else 'MISSED'})")
for k, _ in rows[2:]:
    print(f"{k} per-layer density: " + ", ".join(f"{l['name']} {l['density']:.3f}" for l in s[k]["prune_layers"]))
PY
