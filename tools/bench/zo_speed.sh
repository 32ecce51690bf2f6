#!/usr/bin/env bash
# Zeroth-order step speed (issue #19): the same short run (MLP, dense, q = Q directions, RANKS ranks,
# batch BATCH) with an OLD and a NEW lowsync binary, alternating REPS times, in one script run so
# both see the same machine load. Prints samples/s (summary.json, warm-up excluded) of each run,
# the ratio NEW/OLD of the medians, and checks that both reach the same final loss (the new kernels
# are bitwise equal to the old ones).
#   usage: tools/bench/zo_speed.sh OLD_BINARY [NEW_BINARY=build/bin/lowsync]
#   env:   RANKS=4 Q=64 STEPS=4 BATCH=64 REPS=1 PRUNE=none
set -euo pipefail
OLD=${1:?usage: zo_speed.sh OLD_BINARY [NEW_BINARY]}
NEW=${2:-build/bin/lowsync}
RANKS=${RANKS:-4} Q=${Q:-64} STEPS=${STEPS:-4} BATCH=${BATCH:-64} REPS=${REPS:-1} PRUNE=${PRUNE:-none}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {  # binary tag
  OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none -n "$RANKS" "$1" train \
    --set optim.name=zo --set optim.zo.q="$Q" --set prune.method="$PRUNE" --set train.steps="$STEPS" \
    --set train.batch="$BATCH" --set eval.every=0 --set log.every="$STEPS" --set log.progress=off \
    --set data.train_limit=4000 --out "$work/$2" >"$work/$2.log" 2>&1 || { echo "$2 failed"; tail -3 "$work/$2.log"; exit 1; }
  /usr/bin/python3 -c "import json;s=json.load(open('$work/$2/summary.json'));print(s['samples_per_s'], repr(s['final_loss']))"
}
old=() new=()
for r in $(seq "$REPS"); do
  read -r o_rate o_loss < <(run "$OLD" "old$r")
  read -r n_rate n_loss < <(run "$NEW" "new$r")
  echo "rep $r: old $o_rate samples/s (final loss $o_loss), new $n_rate samples/s (final loss $n_loss)"
  [ "$o_loss" = "$n_loss" ] || echo "WARNING: final losses differ"
  old+=("$o_rate") new+=("$n_rate")
done
/usr/bin/python3 -c "
import statistics, sys
o = statistics.median(map(float, sys.argv[1].split())); n = statistics.median(map(float, sys.argv[2].split()))
print(f'zo q=$Q, $RANKS ranks, batch $BATCH, prune $PRUNE: old {o:.1f} samples/s, new {n:.1f} samples/s, new/old {n/o:.2f}x (target >= 4x)')" "${old[*]}" "${new[*]}"
