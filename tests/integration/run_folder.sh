#!/usr/bin/env bash
# The run-folder contract and launch checks: `train --out` into a folder holding another run is
# refused with one line naming the folder and both ways out (--resume, --force), by rank 0 only and
# with every rank exiting 2; --force removes the old run's files first, so a later --resume cannot
# pick up its checkpoints; --force with --resume is a usage error. A train.batch larger than some
# rank's data partition (iid and a skewed Dirichlet split) is refused naming the rank, its sample
# count and the key.
set -uo pipefail
lowsync="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
check() { if eval "$2"; then passed=$((passed+1)); else failed=$((failed+1)); echo "FAILED: $1"; fi; }
export OMP_NUM_THREADS=1
mpi=(mpirun -q --oversubscribe --bind-to none)
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
small=(--set model.arch=mlp --set data.train_limit=600 --set train.batch=8 --set log.progress=off
       --set eval.every=0 --set log.every=2 --set checkpoint.every=2)

# 1. A first run: checkpoints at steps 2, 4 and 6.
"$lowsync" train "${small[@]}" --set train.steps=6 --set checkpoint.keep=5 --out "$tmp/run" >"$tmp/first.log" 2>&1
check "first run succeeds" '[ $? -eq 0 ] && [ -f "$tmp/run/checkpoints/ckpt-00000006.h5" ]'

# 2. The same --out again, on 2 ranks: refused once, every rank exits 2, nothing touched.
before=$(ls -l --time-style=+%s.%N "$tmp/run" "$tmp/run/checkpoints" | md5sum)
timeout 60 "${mpi[@]}" -n 2 "$lowsync" train "${small[@]}" --set train.steps=2 --out "$tmp/run" >"$tmp/again.log" 2>&1
code=$?
check "reuse: exit 2 (got $code)" '[ $code -eq 2 ]'
check "reuse: one line naming the folder and both ways out" \
  '[ "$(wc -l <"$tmp/again.log")" -eq 1 ] && grep -q "rank 0: error: --out $tmp/run already holds another run (config.toml, metrics.csv, summary.json, 3 checkpoint files); continue it with --resume $tmp/run or replace it with --force" "$tmp/again.log"'
check "reuse: the old run is untouched" '[ "$(ls -l --time-style=+%s.%N "$tmp/run" "$tmp/run/checkpoints" | md5sum)" = "$before" ]'

# 3. A folder holding only checkpoints (a run killed before its first metrics row) counts too.
mkdir -p "$tmp/ckonly/checkpoints" && cp "$tmp/run/checkpoints/ckpt-00000002.h5" "$tmp/ckonly/checkpoints/"
"$lowsync" train "${small[@]}" --set train.steps=2 --out "$tmp/ckonly" >"$tmp/ckonly.log" 2>&1
check "checkpoints alone: refused" '[ $? -eq 2 ] && grep -q "already holds another run (1 checkpoint file)" "$tmp/ckonly.log"'
# ... and an empty or unrelated folder does not.
mkdir -p "$tmp/empty" && echo notes >"$tmp/empty/README"
"$lowsync" train "${small[@]}" --set train.steps=2 --out "$tmp/empty" >"$tmp/empty.log" 2>&1
check "a folder without a run is used" '[ $? -eq 0 ] && [ -f "$tmp/empty/summary.json" ] && [ -f "$tmp/empty/README" ]'

# 4. --force: the old run's files go first; the new run (2 steps) leaves only its own checkpoint,
#    so --resume continues the new run, not the old one's step 6. Other files stay.
echo keep >"$tmp/run/notes.txt"
"$lowsync" train "${small[@]}" --set train.steps=2 --force --out "$tmp/run" >"$tmp/force.log" 2>&1
check "force: succeeds" '[ $? -eq 0 ]'
check "force: only the new run's checkpoint is left" '[ "$(ls "$tmp/run/checkpoints")" = "ckpt-00000002.h5" ]'
check "force: unrelated files stay" '[ -f "$tmp/run/notes.txt" ]'
check "force: metrics.csv is the new run's (rows up to step 2)" '[ "$(tail -1 "$tmp/run/metrics.csv" | cut -d, -f1)" = 2 ]'
"$lowsync" train "${small[@]}" --set train.steps=4 --resume "$tmp/run" >"$tmp/resume.log" 2>&1
check "resume after force starts from the new run's step 2" '[ $? -eq 0 ] && grep -q "step 2" "$tmp/resume.log" && ! grep -q "step 6" "$tmp/resume.log"'

# 5. --resume and --force together: a usage error (exit 1).
"$lowsync" train --resume "$tmp/run" --force >"$tmp/both.log" 2>&1
check "--resume with --force: usage error" '[ $? -eq 1 ] && grep -q "excludes" "$tmp/both.log"'
# A custom checkpoint.dir holding checkpoints counts as a previous run as well.
"$lowsync" train "${small[@]}" --set train.steps=2 --set checkpoint.dir="$tmp/run/checkpoints" --out "$tmp/other" \
  >"$tmp/ckdir.log" 2>&1
check "checkpoint.dir with checkpoints: refused" '[ $? -eq 2 ] && grep -q "already holds another run (2 checkpoint files)" "$tmp/ckdir.log"'

# 6. train.batch larger than a rank's partition: 100 samples over 4 ranks, batch 64.
timeout 60 "${mpi[@]}" -n 4 "$lowsync" train --set data.train_limit=100 --set train.batch=64 --out "$tmp/big" \
  >"$tmp/big.log" 2>&1
code=$?
check "batch > partition (iid, 4 ranks): exit 2 (got $code)" '[ $code -eq 2 ]'
check "batch > partition: one line naming rank, count and key" \
  '[ "$(wc -l <"$tmp/big.log")" -eq 1 ] && grep -q "train.batch = 64 is larger than rank 0.s partition of 25 training samples" "$tmp/big.log"'
check "batch > partition: no run folder written" '[ ! -e "$tmp/big" ]'
# A skewed Dirichlet split: enough samples on average (600 / 2 = 300), but rank 0 gets 224.
timeout 60 "${mpi[@]}" -n 2 "$lowsync" train --set data.train_limit=600 --set data.partition=dirichlet \
  --set data.alpha=0.05 --set train.batch=250 --out "$tmp/skew" >"$tmp/skew.log" 2>&1
code=$?
check "batch > partition (dirichlet): exit 2 (got $code)" '[ $code -eq 2 ]'
check "batch > partition (dirichlet): names the rank and data.partition" \
  'grep -Eq "train.batch = 250 is larger than rank 0.s partition of 224 training samples \(600 samples over 2 ranks, data.partition = \"dirichlet\"\)" "$tmp/skew.log"'

# The resume hint of a stopped run names the launcher and rank count and shell-quotes the folder.
"${mpi[@]}" -n 2 "$lowsync" train "${small[@]}" --set train.steps=100000 --set train.max_seconds=0.5 \
  --out "$tmp/a b" >"$tmp/hint.log" 2>&1
check "stopped run: resume hint with mpirun -n 2 and a quoted folder" \
  '[ $? -eq 3 ] && grep -qF "resume with: mpirun -n 2 lowsync train --resume '"'"'$tmp/a b'"'"'" "$tmp/hint.log"'

echo "run_folder: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
