#!/usr/bin/env bash
# Crash test of trainer checkpoints: start `lowsync train` on RANKS ranks writing a checkpoint
# every step (most of the wall time is spent writing), kill -9 every process of the job at a random
# moment, then check that the newest checkpoint left behind (what --resume would pick) verifies
# with `lowsync inspect` and with read_checkpoint.py, and that the run resumes from it. Repeats.
#
# Usage: tools/checkpoint/trainer_crash_test.sh <lowsync binary> [rounds (20)]
# Env:   RANKS (2), MPIEXEC ("mpirun --allow-run-as-root --oversubscribe --bind-to none"), PYTHON
set -euo pipefail
lowsync=$(realpath "${1:?usage: trainer_crash_test.sh <lowsync binary> [rounds]}")
rounds=${2:-20}
ranks=${RANKS:-2}
read -r -a mpiexec <<<"${MPIEXEC:-mpirun --allow-run-as-root --oversubscribe --bind-to none}"
python=${PYTHON:-/usr/bin/python3}
reader="$(dirname "$(realpath "$0")")/read_checkpoint.py"
work=$(mktemp -d /tmp/lowsync-trainer-crash.XXXXXX)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1
fail() { echo "trainer_crash_test: FAIL: $*" >&2; exit 1; }
sets=(--set model.arch=mlp --set data.train_limit=2000 --set train.batch=8 --set train.steps=100000
      --set checkpoint.every=1 --set checkpoint.keep=2 --set log.progress=off --set eval.every=0 --set log.every=100)

mid_write=0 resumed=0
for round in $(seq 1 "$rounds"); do
  out="$work/run"
  rm -rf "$out"
  setsid "${mpiexec[@]}" -n "$ranks" "$lowsync" train "${sets[@]}" --out "$out" >"$work/train.log" 2>&1 &
  job=$!
  for _ in $(seq 1 600); do  # until the first checkpoint exists
    compgen -G "$out/checkpoints/ckpt-*.h5" >/dev/null && break
    kill -0 "$job" 2>/dev/null || fail "round $round: trainer exited early: $(tail -3 "$work/train.log")"
    sleep 0.05
  done
  sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", (r % 100) / 100 }')"
  kill -9 $(ps -o pid= -s "$job") 2>/dev/null || true
  wait "$job" 2>/dev/null || true
  for _ in $(seq 1 100); do [[ -z "$(ps -o pid= -s "$job")" ]] && break; sleep 0.1; done
  if compgen -G "$out/checkpoints/*.tmp" >/dev/null; then mid_write=$((mid_write + 1)); fi

  latest=$("$python" "$reader" --latest "$out/checkpoints" |
           "$python" -c 'import json, sys; d = json.load(sys.stdin); print(d["path"] if d["ok"] else "none")')
  [[ "$latest" != none ]] || fail "round $round: read_checkpoint.py finds no good checkpoint"
  "$lowsync" inspect "$latest" >"$work/inspect.log" 2>&1 || fail "round $round: inspect $latest: $(tail -1 "$work/inspect.log")"
  step=$("$python" -c "import h5py; print(int(h5py.File('$latest','r').attrs['step']))")
  # Resume picks the same file and trains one more step.
  "${mpiexec[@]}" -n "$ranks" "$lowsync" train --resume "$out" --set train.steps=$((step + 1)) \
    --set checkpoint.every=0 >"$work/resume.log" 2>&1 || fail "round $round: resume failed: $(tail -2 "$work/resume.log")"
  grep -q "resumed from $latest at step $step" "$work/resume.log" || fail "round $round: resume did not use $latest"
  resumed=$((resumed + 1))
  echo "trainer_crash_test: round $round: killed at step >= $step; $(basename "$latest") verifies and resumes"
done
echo "trainer_crash_test: $rounds rounds passed ($mid_write killed with a .tmp being written, $resumed resumed)"
