#!/usr/bin/env bash
# Zeroth-order step speed (issue #19): the same short run (MLP, q = Q directions, RANKS ranks,
# batch BATCH, prune PRUNE) with an OLD lowsync binary and a NEW one at each optim.zo.directions_per_pass
# in PASSES, alternating REPS times, in one script run so all see the same machine load. Prints
# samples/s (summary.json, warm-up excluded) and train_state_bytes of each run, the ratio of each
# NEW setting's median to OLD's, and the final losses' largest relative difference from OLD's.
# Since the directions are applied to unperturbed weights (no in-place restore), NEW differs from
# a binary before 2026-12 by the restore rounding only (~1e-10 relative in the loss); NEW's
# settings agree with each other bitwise.
#   usage: tools/bench/zo_speed.sh OLD_BINARY [NEW_BINARY=build/bin/lowsync]
#   env:   RANKS=4 Q=64 STEPS=4 BATCH=64 REPS=1 PRUNE=none PASSES="1 8"
set -euo pipefail
OLD=${1:?usage: zo_speed.sh OLD_BINARY [NEW_BINARY]}
NEW=${2:-build/bin/lowsync}
RANKS=${RANKS:-4} Q=${Q:-64} STEPS=${STEPS:-4} BATCH=${BATCH:-64} REPS=${REPS:-1} PRUNE=${PRUNE:-none}
PASSES=${PASSES:-1 8}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {  # binary tag [extra --set ...]
  local bin=$1 tag=$2
  shift 2
  OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none -n "$RANKS" "$bin" train \
    --set optim.name=zo --set optim.zo.q="$Q" --set prune.method="$PRUNE" --set train.steps="$STEPS" \
    --set train.batch="$BATCH" --set eval.every=0 --set log.every="$STEPS" --set log.progress=off \
    --set data.train_limit=4000 "$@" --out "$work/$tag" >"$work/$tag.log" 2>&1 || { echo "$tag failed"; tail -3 "$work/$tag.log"; exit 1; }
  /usr/bin/python3 -c "import json;s=json.load(open('$work/$tag/summary.json'));print(s['samples_per_s'], repr(s['final_loss']), s['train_state_bytes'])"
}
results=$work/results.txt
for r in $(seq "$REPS"); do
  read -r rate loss state < <(run "$OLD" "old$r")
  echo "rep $r: old: $rate samples/s, final loss $loss, train state $state B"
  echo "old $rate $loss $state" >>"$results"
  for p in $PASSES; do
    read -r rate loss state < <(run "$NEW" "new${p}_$r" --set optim.zo.directions_per_pass="$p")
    echo "rep $r: new, $p per pass: $rate samples/s, final loss $loss, train state $state B"
    echo "new$p $rate $loss $state" >>"$results"
  done
done
/usr/bin/python3 - "$results" <<PY
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    tag, rate, loss, state = line.split()
    rows.setdefault(tag, []).append((float(rate), float(loss), int(state)))
old = statistics.median(r[0] for r in rows["old"])
old_loss = rows["old"][0][1]
print(f"zo q=$Q, $RANKS ranks, batch $BATCH, prune $PRUNE: old {old:.1f} samples/s")
for tag, rs in rows.items():
    if tag == "old":
        continue
    rate = statistics.median(r[0] for r in rs)
    rel = max(abs(r[1] - old_loss) / abs(old_loss) for r in rs)
    print(f"  {tag[3:]} per pass: {rate:.1f} samples/s, new/old {rate / old:.2f}x, train state {rs[0][2] / 1e6:.2f} MB, "
          f"final loss relative to old's within {rel:.1e}")
PY
