#!/usr/bin/env bash
# Crash test of the checkpoint files (src/io/checkpoint_file.cpp, atomic commit per STYLE.md §4):
# kill -9 a multi-rank writer at random moments and check that the newest checkpoint left behind
# always verifies, with the C++ reader and independently with read_checkpoint.py; then the
# disk-full test on a 1 MiB tmpfs (needs root to mount; skipped otherwise).
#
# Usage: tools/checkpoint/crash_test.sh <test_checkpoint_file binary> [rounds]
# Env:   RANKS (2), MPIEXEC ("mpirun --allow-run-as-root --oversubscribe"), PYTHON (/usr/bin/python3:
#        needs h5py), CKPT_MIB (4: MiB of per-rank state per checkpoint and rank)
set -euo pipefail

bin=$(realpath "${1:?usage: crash_test.sh <test_checkpoint_file binary> [rounds]}")
rounds=${2:-10}
ranks=${RANKS:-2}
read -r -a mpiexec <<<"${MPIEXEC:-mpirun --allow-run-as-root --oversubscribe}"
python=${PYTHON:-/usr/bin/python3}
reader="$(dirname "$(realpath "$0")")/read_checkpoint.py"

work=$(mktemp -d /tmp/lowsync-crash.XXXXXX)
small="$work/small"
cleanup() {
  if mountpoint -q "$small" 2>/dev/null; then umount "$small"; fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "crash_test: FAIL: $*" >&2; exit 1; }

killed_mid_write=0
for round in $(seq 1 "$rounds"); do
  dir="$work/run"
  rm -rf "$dir"
  # Own session (id = $writer), so the kill below reaches mpirun and every rank.
  LOWSYNC_CKPT_DIR="$dir" LOWSYNC_CKPT_STEPS=100000 LOWSYNC_CKPT_MIB="${CKPT_MIB:-4}" \
    setsid "${mpiexec[@]}" -n "$ranks" "$bin" --gtest_also_run_disabled_tests \
    --gtest_filter='CheckpointFileTool.DISABLED_WriteSteps' >"$work/writer.log" 2>&1 &
  writer=$!
  # Wait for the first commit, then kill at a random moment 0-1.5 s later.
  for _ in $(seq 1 300); do
    grep -q '^committed:' "$work/writer.log" 2>/dev/null && break
    kill -0 "$writer" 2>/dev/null || break
    sleep 0.1
  done
  sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", (r % 150) / 100 }')"
  # OpenMPI puts each rank in its own process group but in mpirun's session: kill the session's
  # processes (all started here) at once, then wait until none is left writing.
  kill -9 $(ps -o pid= -s "$writer") 2>/dev/null || true
  wait "$writer" 2>/dev/null || true
  for _ in $(seq 1 100); do
    [[ -z "$(ps -o pid= -s "$writer")" ]] && break
    sleep 0.1
  done

  last=$(grep '^committed:' "$work/writer.log" | tail -1 | sed 's/^committed: //')
  [[ -n "$last" ]] || fail "round $round: the writer never committed (log: $(tail -3 "$work/writer.log"))"
  if compgen -G "$dir/*.tmp" >/dev/null; then killed_mid_write=$((killed_mid_write + 1)); fi

  latest=$(LOWSYNC_CKPT_DIR="$dir" "${mpiexec[@]}" -n "$ranks" "$bin" --gtest_also_run_disabled_tests \
           --gtest_filter='CheckpointFileTool.DISABLED_FindLatest' 2>/dev/null | sed -n 's/^latest: //p')
  [[ -n "$latest" && "$latest" != none ]] || fail "round $round: no checkpoint found after kill"
  # The last checkpoint reported committed (or a newer one committed before the kill) must load.
  [[ ! "$latest" < "$last" ]] || fail "round $round: latest $latest is older than committed $last"
  py_latest=$("$python" "$reader" --latest "$dir" |
              "$python" -c 'import json, sys; d = json.load(sys.stdin); print(d["path"] if d["ok"] else "none")')
  [[ "$py_latest" == "$latest" ]] || fail "round $round: read_checkpoint.py picks $py_latest, C++ picks $latest"
  echo "crash_test: round $round: killed after $(basename "$last"); latest $(basename "$latest") verifies"
done
echo "crash_test: $rounds rounds passed ($killed_mid_write killed with a .tmp being written)"

mkdir -p "$small"
if mount -t tmpfs -o size=1m tmpfs "$small" 2>/dev/null; then
  LOWSYNC_TEST_SMALL_DIR="$small" "${mpiexec[@]}" -n "$ranks" "$bin" \
    --gtest_color=no --gtest_filter='CheckpointFile.DiskFullKeepsPreviousCheckpoint' >"$work/diskfull.log" 2>&1 ||
    fail "disk-full test: $(grep -E 'Failure|FAILED' "$work/diskfull.log" | head -3)"
  grep -q '\[  PASSED  \] 1 test' "$work/diskfull.log" || fail "disk-full test did not run"
  echo "crash_test: disk-full test passed on a 1 MiB tmpfs"
else
  echo "crash_test: disk-full test skipped (cannot mount a tmpfs; needs root)"
fi
