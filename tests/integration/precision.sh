#!/usr/bin/env bash
# End-to-end precision paths (README "Precision"): fp8 wire under periodic averaging counts the
# encoded bytes in the ledger (formula of the fp32 server round), fp8 compute trains to a finite
# loss, the refused combinations exit non-zero naming the keys; native 16-bit storage halves the
# training state, trains like float storage and resumes bitwise, also under periodic averaging
# and FDA; fp8 wires and DeMo stay on float storage.
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
# 2 rounds on 2 ranks, MLP d = 535818, T = 6 tensors, shard S = ceil(d/N) values. Per round and
# rank (sharded fp32 server, docs/precision.md): alltoall of the upload shards (N-1)(4T + S),
# allgather of the encoded model (N-1) S, amax allreduce 2(N-1)/N 4T, allgather of the scale
# candidates' partial errors (N-1) 128T. Plus the fp32 start broadcast, (N-1)/N 4d = 2d per rank.
check "fp8 wire bytes in the ledger" /usr/bin/python3 - "$tmp/p8/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
d, T, N = 535818, 6, 2
S = -(-d // N)
round_bytes = (N - 1) * (4 * T + S) + (N - 1) * S + 2 * (N - 1) / N * 4 * T + (N - 1) * 128 * T
expect = 2 * round_bytes + 2 * d
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

# Native 16-bit storage (precision.storage): parameters, gradients and optimizer state in 16 bits.
for dt in bf16 fp16; do
  for storage in native float; do
    "${mpi[@]}" "$lowsync" train "${small[@]}" --set optim.name=adamw --set optim.lr=0.002 --set precision.compute=$dt \
      --set precision.storage=$storage --set checkpoint.every=10 --set log.every=5 --out "$tmp/$dt-$storage" >"$tmp/$dt-$storage.out" 2>&1
    check "$dt $storage storage runs" test $? -eq 0
  done
  # Same numerics (the stored values are the same 16-bit grid), half the bytes for parameters +
  # gradients + Adam state and for activations, and a loss that went down.
  check "$dt native storage: 2x fewer state bytes, same training" /usr/bin/python3 - "$tmp/$dt-native/summary.json" "$tmp/$dt-float/summary.json" <<'PY'
import json, math, sys
n, f = (json.load(open(p)) for p in sys.argv[1:3])
assert n["precision_storage"] == "native" and f["precision_storage"] == "float", (n["precision_storage"], f["precision_storage"])
d = 535818
assert n["param_grad_optim_bytes"]["stored"] == 2 * 4 * d, n["param_grad_optim_bytes"]
assert f["param_grad_optim_bytes"]["stored"] == 4 * 4 * d, f["param_grad_optim_bytes"]
# Activations are u16 too: half the float buffers plus the fp32 logits and their gradient. The
# whole (parameters + gradients + Adam state + activations + fp32 stage) is >= 1.9x smaller for
# bf16 (no stage: bf16 primitives) and >= 1.5x for fp16 (tiled W and the batch's activations staged).
batch = 64
assert n["activation_bytes"] == f["activation_bytes"] // 2 + 2 * batch * 10 * 4, (n["activation_bytes"], f["activation_bytes"])
total = lambda s: s["param_grad_optim_bytes"]["stored"] + s["param_grad_optim_bytes"]["staging"] + s["activation_bytes"]
assert total(f) / total(n) >= (1.9 if n["precision_compute"] == "bf16" else 1.5), (total(f), total(n), n["param_grad_optim_bytes"])
assert math.isfinite(n["final_loss"]) and n["final_loss"] < 2.0, n["final_loss"]
# final_loss: mean of the last 5 steps; the two storages sum in a different fp32 order.
assert abs(n["final_loss"] - f["final_loss"]) < 0.1 * f["final_loss"], (n["final_loss"], f["final_loss"])
PY
  # Resume from the step-10 checkpoint: the 16-bit values round-trip through the float checkpoint
  # exactly, so the continued run ends where the uninterrupted one did, bit for bit.
  ckpt="$tmp/$dt-native/checkpoints/ckpt-00000010.h5"
  "${mpi[@]}" "$lowsync" train "${small[@]}" --set optim.name=adamw --set optim.lr=0.002 --set precision.compute=$dt \
    --set precision.storage=native --set checkpoint.every=10 --set log.every=5 --resume "$ckpt" --out "$tmp/$dt-resumed" >"$tmp/$dt-resumed.out" 2>&1
  check "$dt native resume runs" test $? -eq 0
  check "$dt native resume ends bitwise where the uninterrupted run did" /usr/bin/python3 -c "
import json; a, b = (json.load(open(p)) for p in ('$tmp/$dt-native/summary.json', '$tmp/$dt-resumed/summary.json'))
assert (a['final_loss'], a['final_test_accuracy']) == (b['final_loss'], b['final_test_accuracy']), (a['final_loss'], b['final_loss'])"
done

# Native storage for periodic averaging and FDA (u16 replicas; FDA's w0/w0_prev in u16, xi fp32):
# storage reported, strategy state bytes as stored, bitwise resume from the step-10 checkpoint.
d=535818
for run in "periodic bf16 fp32" "periodic fp16 fp16" "fda bf16 bf16" "fda fp16 fp32"; do
  read -r strat dt wire <<<"$run"
  name="$strat-$dt-$wire"
  sets=(--set sync.strategy=$strat --set sync.period=4 --set sync.fda.threshold=4 --set sync.average_optimizer_state=true
        --set optim.name=adamw --set optim.lr=0.002 --set precision.compute=$dt --set precision.wire=$wire
        --set checkpoint.every=10 --set log.every=5)
  "${mpi[@]}" "$lowsync" train "${small[@]}" "${sets[@]}" --out "$tmp/$name" >"$tmp/$name.out" 2>&1
  check "$name native runs" test $? -eq 0
  check "$name native storage reported, state bytes as stored" /usr/bin/python3 - "$tmp/$name/summary.json" "$strat" <<'PY'
import json, math, sys
s = json.load(open(sys.argv[1])); strat = sys.argv[2]; d = 535818
assert s["precision_storage"] == "native", s["precision_storage"]
assert s["param_grad_optim_bytes"]["stored"] == 2 * 4 * d, s["param_grad_optim_bytes"]
# FDA (linear): u16 w0 + w0_prev, fp32 xi; periodic keeps nothing model-sized.
expect = 2 * 2 * d + 4 * d if strat == "fda" else 0
assert s["strategy_state_bytes"] == {"per_rank": expect, "rank0": 0, "tables": 0}, s["strategy_state_bytes"]
assert s["syncs"] >= 1, s["syncs"]
assert math.isfinite(s["final_loss"]) and s["final_loss"] < 2.0, s["final_loss"]
PY
  "${mpi[@]}" "$lowsync" train "${small[@]}" "${sets[@]}" --resume "$tmp/$name/checkpoints/ckpt-00000010.h5" \
    --out "$tmp/$name-resumed" >"$tmp/$name-resumed.out" 2>&1
  check "$name native resume runs" test $? -eq 0
  check "$name native resume ends bitwise where the uninterrupted run did" /usr/bin/python3 -c "
import json; a, b = (json.load(open(p)) for p in ('$tmp/$name/summary.json', '$tmp/$name-resumed/summary.json'))
assert (a['final_loss'], a['final_test_accuracy'], a['syncs']) == (b['final_loss'], b['final_test_accuracy'], b['syncs']), (a['final_loss'], b['final_loss'])"
done
# Float storage FDA holds fp32 w0, w0_prev and xi: 12 bytes a value.
"${mpi[@]}" "$lowsync" train "${small[@]}" --set sync.strategy=fda --set precision.compute=bf16 --set precision.storage=float \
  --out "$tmp/fda-float" >"$tmp/fda-float.out" 2>&1
check "fda float storage state bytes" /usr/bin/python3 -c "
import json; s = json.load(open('$tmp/fda-float/summary.json'))
assert s['precision_storage'] == 'float' and s['strategy_state_bytes']['per_rank'] == 12 * $d, s['strategy_state_bytes']"

# What stays on float storage: an fp8 wire (the fp32 server model) and DeMo (fp32 by spec).
"$lowsync" train "${small[@]}" --set precision.compute=bf16 --set precision.storage=native --set sync.strategy=periodic \
  --set precision.wire=fp8_e4m3 --out "$tmp/np8" >"$tmp/np8.out" 2>&1
check "native storage + fp8 wire refused" test $? -ne 0
check "native storage + fp8 wire names the key" grep -q 'precision.storage = "native" is not available with precision.wire = fp8_e4m3' "$tmp/np8.out"
"$lowsync" train "${small[@]}" --set precision.compute=bf16 --set sync.strategy=fda --set precision.wire=fp8_e4m3 \
  --out "$tmp/af8" >"$tmp/af8.out" 2>&1
check "auto storage falls back to float for an fp8 wire, and says so" \
  grep -q "precision.storage: float buffers rounded to bf16 (native storage not available with precision.wire = fp8_e4m3" "$tmp/af8.out"
"$lowsync" train "${small[@]}" --set precision.compute=bf16 --set precision.storage=native --set sync.strategy=demo \
  --out "$tmp/nd" >"$tmp/nd.out" 2>&1
check "native storage + demo refused" test $? -ne 0
check "native storage + demo names the key" grep -q 'precision.storage = "native" is not available with sync.strategy = demo' "$tmp/nd.out"
"$lowsync" train "${small[@]}" --set precision.compute=bf16 --set sync.strategy=demo --out "$tmp/ad" >"$tmp/ad.out" 2>&1
check "auto storage falls back to float for demo, and says so" \
  grep -q "precision.storage: float buffers rounded to bf16 (native storage not available with sync.strategy = demo" "$tmp/ad.out"

# Stochastic rounding of the 16-bit parameter update: replicas stay identical under allreduce (the
# uniforms are keyed by seed, step and element, not rank), so a native bf16 run resumes bitwise;
# it is refused where there are no 16-bit parameters to round.
sr=(--set optim.name=sgd --set optim.lr=0.05 --set precision.compute=bf16 --set precision.update_rounding=stochastic
    --set checkpoint.every=10 --set log.every=5)
"${mpi[@]}" "$lowsync" train "${small[@]}" "${sr[@]}" --out "$tmp/sr" >"$tmp/sr.out" 2>&1
check "bf16 stochastic update rounding runs on native storage" /usr/bin/python3 -c "
import json, math; s = json.load(open('$tmp/sr/summary.json'))
assert s['precision_storage'] == 'native' and math.isfinite(s['final_loss']) and s['final_loss'] < 2.2, s['final_loss']"
"${mpi[@]}" "$lowsync" train "${small[@]}" "${sr[@]}" --resume "$tmp/sr/checkpoints/ckpt-00000010.h5" \
  --out "$tmp/sr-resumed" >"$tmp/sr-resumed.out" 2>&1
check "stochastic update rounding resumes bitwise" /usr/bin/python3 -c "
import json; a, b = (json.load(open(p)) for p in ('$tmp/sr/summary.json', '$tmp/sr-resumed/summary.json'))
assert (a['final_loss'], a['final_test_accuracy']) == (b['final_loss'], b['final_test_accuracy']), (a['final_loss'], b['final_loss'])"
"$lowsync" train "${small[@]}" --set precision.update_rounding=stochastic --out "$tmp/sr32" >"$tmp/sr32.out" 2>&1
check "stochastic update rounding refused with fp32 compute, naming the keys" \
  grep -q 'precision.update_rounding = "stochastic" rounds 16-bit parameters: it needs precision.compute = bf16 or fp16' "$tmp/sr32.out"
"$lowsync" train "${small[@]}" --set optim.name=zo --set precision.update_rounding=stochastic --out "$tmp/srzo" >"$tmp/srzo.out" 2>&1
check "stochastic update rounding refused for zo (fp32 only), not ignored" \
  grep -q 'precision.update_rounding = "stochastic" rounds 16-bit parameters: it needs precision.compute = bf16 or fp16, not fp32' "$tmp/srzo.out"

echo "precision.sh: $passed passed, $failed failed"
test "$failed" -eq 0
