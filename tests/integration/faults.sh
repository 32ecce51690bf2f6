#!/usr/bin/env bash
# Faults end to end: a rank that hangs inside a step (test-only debug.hang_* keys) ends the whole
# job non-zero within comm.timeout_seconds with a message naming the collective and step; a
# diverging run stops with an error naming the step and keeps its last good checkpoint; bad
# --resume targets (missing, truncated, bit-flipped, another model) give one-line errors naming
# the file; and a CI-sized fuzz round (tools/fuzz/fuzz_inputs.py) never crashes or hangs.
set -uo pipefail
lowsync="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
check() { if eval "$2"; then passed=$((passed+1)); else failed=$((failed+1)); echo "FAILED: $1"; fi; }
export OMP_NUM_THREADS=1
mpi=(mpirun --oversubscribe --bind-to none)
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
small=(--set model.arch=mlp --set data.train_limit=600 --set train.batch=8 --set log.progress=off
       --set eval.every=0 --set log.every=5)

# 1. Hang: rank 1 sleeps forever at step 5; the others wait in a collective.
start=$(date +%s)
timeout 90 "${mpi[@]}" -n 3 "$lowsync" train "${small[@]}" --set train.steps=50 --set comm.timeout_seconds=3 \
  --set debug.hang_rank=1 --set debug.hang_step=5 --out "$tmp/hang" >"$tmp/hang.log" 2>&1
code=$?
elapsed=$(( $(date +%s) - start ))
check "hang: job ends non-zero, not by the outer timeout (got $code)" '[ $code -ne 0 ] && [ $code -ne 124 ]'
check "hang: ends within 40 s (took $elapsed s)" '[ $elapsed -le 40 ]'
check "hang: message names collective and step" 'grep -q "did not complete within comm.timeout_seconds = 3 s at step 5" "$tmp/hang.log"'

# 2. Divergence: a huge learning rate; checkpoints every 2 steps until it breaks.
"${mpi[@]}" -n 2 "$lowsync" train "${small[@]}" --set train.steps=200 --set optim.lr=1e12 \
  --set checkpoint.every=2 --out "$tmp/nan" >"$tmp/nan.log" 2>&1
code=$?
check "NaN: exits with status 2 (got $code)" '[ $code -eq 2 ]'
check "NaN: error names the step" 'grep -Eq "non-finite (training loss( or weights)?|parameters in tensor .*) at step [0-9]+" "$tmp/nan.log"'
latest=$(ls "$tmp"/nan/checkpoints/ckpt-*.h5 2>/dev/null | tail -1)
check "NaN: last good checkpoint kept and valid" '[ -n "$latest" ] && "$lowsync" inspect "$latest" >/dev/null 2>&1'

# 3. Bad --resume targets: one line naming the file and the problem.
"${mpi[@]}" -n 2 "$lowsync" train "${small[@]}" --set train.steps=4 --set checkpoint.every=4 --out "$tmp/good" \
  >"$tmp/good.log" 2>&1
good="$tmp/good/checkpoints/ckpt-00000004.h5"
check "good run wrote a checkpoint" '[ -f "$good" ]'
"$lowsync" train --resume "$tmp/nothing" >"$tmp/r1.log" 2>&1
check "resume of a missing path fails clearly" '[ $? -eq 2 ] && grep -q "nothing: no such checkpoint file or run folder" "$tmp/r1.log"'
head -c 5000 "$good" >"$tmp/trunc.h5"
"$lowsync" train --resume "$tmp/trunc.h5" --out "$tmp/r2" >"$tmp/r2.log" 2>&1
check "resume of a truncated file fails clearly" '[ $? -eq 2 ] && [ "$(grep -c error "$tmp/r2.log")" -eq 1 ] && grep -q trunc.h5 "$tmp/r2.log"'
"$lowsync" train --resume "$good" --set model.arch=cnn --out "$tmp/r3" >"$tmp/r3.log" 2>&1
check "resume with another model fails clearly" '[ $? -eq 2 ] && grep -q "is from a different run: model.arch is \"mlp\" there, \"cnn\" here" "$tmp/r3.log"'
cp "$good" "$tmp/flip.h5"
/usr/bin/python3 - "$tmp/flip.h5" <<'PY'
import sys, h5py
f = h5py.File(sys.argv[1], "r"); off = f["model/params"].id.get_offset(); f.close()
with open(sys.argv[1], "r+b") as g:
    g.seek(off + 1000); b = g.read(1); g.seek(off + 1000); g.write(bytes([b[0] ^ 0x10]))
PY
"$lowsync" inspect "$tmp/flip.h5" >"$tmp/r4.log" 2>&1
check "inspect of a bit-flipped file names the dataset" '[ $? -eq 2 ] && grep -q "model/params" "$tmp/r4.log" && grep -qi "crc\|checksum" "$tmp/r4.log"'

# 4. Fuzz (CI size): mutated checkpoints, IDX files and configs.
/usr/bin/python3 "$LOWSYNC_SOURCE_DIR/tools/fuzz/fuzz_inputs.py" --lowsync "$lowsync" --checkpoint "$good" \
  --count 8 >"$tmp/fuzz.log" 2>&1
check "fuzz: every input gives a clean error" '[ $? -eq 0 ]'
tail -1 "$tmp/fuzz.log"

[ $failed -eq 0 ] || for f in "$tmp"/*.log; do echo "== $f"; tail -n 4 "$f"; done
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
