#!/usr/bin/env bash
# Speed of the low-precision wires (issue #19, ALGORITHMS.md §1 "Cost"): periodic averaging and FDA
# over fp8_e4m3 and bf16 wires against the same run over an fp32 wire, RANKS ranks, MLP. Runs are
# interleaved (every wire once per repeat) and each repeat's ratio is this wire's samples/s over
# the fp32 run of the same repeat; the table prints medians over REPEATS. Target: fp8 >= 0.8x.
#   usage: tools/bench/wire_speed.sh [LOWSYNC_BINARY] [OUT_DIR]
#   env:   RANKS=4 STEPS=400 REPEATS=3 PERIOD=8 WIRES="fp32 fp8_e4m3 bf16" STRATEGIES="periodic fda"
#          FDA_C=2e-7 (sync.fda.threshold_per_param: small, so FDA syncs every few steps and the
#          wire is exercised) DATA=/usr/share/datasets/fashion-mnist
set -euo pipefail
BIN=${1:-build/bin/lowsync}
OUT=${2:-/tmp/lowsync_wire_speed}
RANKS=${RANKS:-4} STEPS=${STEPS:-400} REPEATS=${REPEATS:-3} PERIOD=${PERIOD:-8} FDA_C=${FDA_C:-2e-7}
WIRES=${WIRES:-"fp32 fp8_e4m3 bf16"} STRATEGIES=${STRATEGIES:-"periodic fda"}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
case " $WIRES " in *" fp32 "*) ;; *) echo "wire_speed.sh: WIRES must include fp32 (the baseline)" >&2; exit 2 ;; esac
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
for rep in $(seq 1 "$REPEATS"); do
  for strategy in $STRATEGIES; do
    extra=(--set sync.period="$PERIOD")
    [ "$strategy" = fda ] && extra=(--set sync.fda.threshold_per_param="$FDA_C")
    for wire in $WIRES; do
      name="$strategy-$wire-$rep"
      mpirun --allow-run-as-root --oversubscribe --bind-to none -n "$RANKS" "$BIN" train \
        --set data.dir="$DATA" --set model.arch=mlp --set sync.strategy="$strategy" "${extra[@]}" \
        --set precision.wire="$wire" --set train.steps="$STEPS" --set eval.every=0 --set log.progress=off \
        --set train.seed=1 --out "$OUT/$name" > "$OUT/$name.log" 2>&1 || { echo "run $name failed:"; tail "$OUT/$name.log"; exit 1; }
    done
  done
done
/usr/bin/python3 - "$OUT" "$REPEATS" "$STRATEGIES" "$WIRES" "$RANKS" "$STEPS" <<'PY'
import json, statistics, sys
out, repeats, strategies, wires, ranks, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split(), sys.argv[5], sys.argv[6]
def summary(s, w, r):
    return json.load(open(f"{out}/{s}-{w}-{r}/summary.json"))
print(f"MLP, {ranks} ranks, {steps} steps, median of {repeats} interleaved repeats (ratio: per repeat vs its fp32 run)")
print("| strategy | wire | samples/s | vs fp32 | ratios | syncs | MB sent/rank | test acc |")
print("|---|---|---|---|---|---|---|---|")
for s in strategies:
    for w in wires:
        runs = [summary(s, w, r) for r in range(1, repeats + 1)]
        base = [summary(s, "fp32", r)["samples_per_s"] for r in range(1, repeats + 1)]
        ratios = [x["samples_per_s"] / b for x, b in zip(runs, base)]
        print(f"| {s} | {w} | {statistics.median(x['samples_per_s'] for x in runs):,.0f} | "
              f"**{statistics.median(ratios):.2f}x** | {' '.join(f'{r:.2f}' for r in ratios)} | {runs[0]['syncs']} | "
              f"{runs[0]['bytes_sent_per_rank'] / 1e6:.2f} | {runs[0]['final_test_accuracy']:.4f} |")
PY
