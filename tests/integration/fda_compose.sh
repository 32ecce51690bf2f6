#!/usr/bin/env bash
# FDA end to end: composes with every data partition and optimizer (optimizer state stays local),
# Θ = 0 trains exactly as periodic averaging with period 1, Θ = ∞ exactly as `none`, and FDA with
# DeMo is refused with a config error.
set -uo pipefail
lowsync="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
check() {
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $name"; fi
}
export OMP_NUM_THREADS=1
mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none -n 2)
common=(--set train.batch=32 --set data.train_limit=3000 --set train.steps=30
        --set eval.every=0 --set log.every=10 --set log.progress=off --set sync.check_every=10)
summary() { /usr/bin/python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(s[sys.argv[2]])" "$@"; }

# 1. Every partition x optimizer; a small Θ so that the run syncs.
for part in iid dirichlet shards; do
  for opt in "optim.name=sgd" "optim.name=sgd optim.momentum=0.9" "optim.name=adamw optim.lr=0.001"; do
    name="${part}-${opt// /-}"
    sets=()
    for kv in $opt; do sets+=(--set "$kv"); done
    "${mpi[@]}" "$lowsync" train "${common[@]}" --set sync.strategy=fda --set sync.fda.threshold=0.05 \
      --set data.partition="$part" --set data.alpha=0.1 "${sets[@]}" --out "$tmp/$name" >"$tmp/$name.log" 2>&1
    code=$?
    check "fda $part $opt: exit 0 (got $code)" test "$code" -eq 0
    syncs=$(summary "$tmp/$name/summary.json" syncs 2>/dev/null)
    check "fda $part $opt: synced at least once (syncs=$syncs)" test "${syncs:-0}" -ge 1
    check "fda $part $opt: fda columns in metrics.csv" grep -q 'fda_vhat' "$tmp/$name/metrics.csv"
  done
done

# 2. Θ = 0 equals periodic with period 1; Θ = ∞ (larger than any variance) equals none.
run() { "${mpi[@]}" "$lowsync" train "${common[@]}" --set optim.momentum=0.9 "$@" >/dev/null 2>&1; }
run --set sync.strategy=fda --set sync.fda.threshold=0 --out "$tmp/fda0"
run --set sync.strategy=periodic --set sync.period=1 --out "$tmp/p1"
run --set sync.strategy=fda --set sync.fda.threshold=1e30 --out "$tmp/fdainf"
run --set sync.strategy=none --out "$tmp/none"
same_curve() {  # the training loss and test accuracy of two runs agree to print precision
  /usr/bin/python3 - "$1" "$2" <<'PY'
import csv, json, sys
a, b = sys.argv[1:3]
def col(d):
    rows = list(csv.DictReader(open(f"{d}/metrics.csv")))
    return [float(r["loss"]) for r in rows]
la, lb = col(a), col(b)
assert len(la) == len(lb) > 0, (len(la), len(lb))
assert all(abs(x - y) <= 1e-6 * max(1.0, abs(y)) for x, y in zip(la, lb)), (la, lb)
sa, sb = json.load(open(f"{a}/summary.json")), json.load(open(f"{b}/summary.json"))
assert sa["final_test_accuracy"] == sb["final_test_accuracy"], (sa["final_test_accuracy"], sb["final_test_accuracy"])
PY
}
syncs=$(summary "$tmp/fda0/summary.json" syncs 2>/dev/null)
check "fda Θ=0 synced every step (syncs=$syncs)" test "${syncs:--1}" -eq 30
check "fda Θ=0 == periodic period 1" same_curve "$tmp/fda0" "$tmp/p1"
syncs=$(summary "$tmp/fdainf/summary.json" syncs 2>/dev/null)
check "fda Θ=inf never synced (syncs=$syncs)" test "${syncs:--1}" -eq 0
check "fda Θ=inf == none" same_curve "$tmp/fdainf" "$tmp/none"

# 3. FDA with DeMo: a one-line config error.
"$lowsync" train --set sync.strategy=fda --set optim.name=demo --out "$tmp/bad" >"$tmp/bad.log" 2>&1
code=$?
check "fda + demo refused (exit $code)" bash -c "[ $code -ne 0 ] && grep -q 'FDA cannot monitor DeMo' '$tmp/bad.log'"

echo "fda_compose: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
