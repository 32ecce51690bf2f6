#!/usr/bin/env bash
# End-to-end precision paths (README "Precision"): fp8 wire under periodic averaging counts the
# encoded bytes in the ledger (formula of the fp32 server round), fp8 compute trains to a finite
# loss, and the refused combinations exit non-zero naming the keys.
set -uo pipefail
lowsync="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
check() {  # check NAME COMMAND...: passes when the command succeeds
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $name"; fi
}
export OMP_NUM_THREADS=1
mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none -n 2)
small=(--set train.steps=20 --set eval.every=0 --set log.progress=off --set data.train_limit=4000)

"${mpi[@]}" "$lowsync" train "${small[@]}" --set sync.strategy=periodic --set sync.period=10 \
  --set precision.wire=fp8_e4m3 --out "$tmp/p8" >"$tmp/p8.out" 2>&1
check "periodic fp8 wire runs" test $? -eq 0
# 2 rounds on 2 ranks, MLP d = 535818, T = 6 tensors, s = d + 4T bytes per contribution. Per
# round: gather (rank 1 sends s, the root 0) and broadcast ((N-1)/N s on each rank): rank mean s.
# Plus the fp32 start broadcast, (N-1)/N 4d = 2d per rank.
check "fp8 wire bytes in the ledger" /usr/bin/python3 - "$tmp/p8/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
d, T = 535818, 6
expect = 2 * (d + 4 * T) + 2 * d
assert s["precision_wire"] == "fp8_e4m3", s["precision_wire"]
assert abs(s["bytes_sent_per_rank"] - expect) <= 2, (s["bytes_sent_per_rank"], expect)
PY

"${mpi[@]}" "$lowsync" train "${small[@]}" --set sync.strategy=allreduce --set precision.compute=fp8 \
  --set precision.wire=fp8_e5m2 --out "$tmp/c8" >"$tmp/c8.out" 2>&1
check "fp8 compute + fp8 gradient wire runs" test $? -eq 0
check "fp8 compute loss is finite" /usr/bin/python3 -c "
import json, math; s = json.load(open('$tmp/c8/summary.json')); assert math.isfinite(s['final_loss']) and s['final_loss'] < 2.3"

"$lowsync" train "${small[@]}" --set sync.strategy=demo --set precision.wire=fp8_e4m3 --out "$tmp/demo" >"$tmp/demo.out" 2>&1
check "demo + fp8 wire refused" test $? -ne 0
check "demo + fp8 wire names the keys" grep -q "precision.wire = 'fp8_e4m3' does not apply to sync.strategy = 'demo'" "$tmp/demo.out"

"$lowsync" train "${small[@]}" --set precision.compute=fp8 --set optim.name=zo --out "$tmp/zo" >"$tmp/zo.out" 2>&1
check "zo + fp8 compute refused" test $? -ne 0
check "zo + fp8 compute names the keys" grep -q 'optim.name = "zo" cannot run with precision.compute = "fp8"' "$tmp/zo.out"

echo "precision.sh: $passed passed, $failed failed"
test "$failed" -eq 0
