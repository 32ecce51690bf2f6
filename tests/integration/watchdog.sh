#!/usr/bin/env bash
# A rank that never reaches a collective: the watchdog of the waiting ranks must name the
# collective and the step and end the whole job with exit status 4 within the timeout, not hang;
# rank 0 (which holds the heartbeat slots) names the rank that did not arrive, also when it is
# the one that hangs. Then the same with the trainer (debug.hang_rank) on 2 ranks.
set -uo pipefail
bin="$(dirname "$1")/test_comm"
flags=(--oversubscribe --bind-to none)
[ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)
start=$(date +%s)
out=$(timeout 50 mpirun -n 3 "${flags[@]}" "$bin" --gtest_also_run_disabled_tests \
      --gtest_filter='*DISABLED_WatchdogEndsAHang' 2>&1)
code=$?
elapsed=$(( $(date +%s) - start ))
passed=0 failed=0
check() { if eval "$2"; then passed=$((passed+1)); else failed=$((failed+1)); echo "FAILED: $1"; fi; }
check "job ends non-zero (got $code)" '[ $code -ne 0 ] && [ $code -ne 124 ]'
check "ends within 30 s (took $elapsed s)" '[ $elapsed -le 30 ]'
check "message names the collective and step" 'grep -q "allreduce (grad) did not complete within comm.timeout_seconds = 2 s at step 17" <<<"$out"'
check "rank 0 names the hung rank 2" 'grep -q "at step 17; waiting for rank(s) 2, which did not reach it" <<<"$out"'
[ $failed -eq 0 ] || echo "$out" | tail -20

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for hang in 1 0; do
  start=$(date +%s)
  out=$(timeout 60 mpirun -n 2 "${flags[@]}" -x OMP_NUM_THREADS=1 "$1" train --set data.train_limit=600 \
        --set train.batch=8 --set train.steps=20 --set log.progress=off --set eval.every=0 \
        --set comm.timeout_seconds=3 --set debug.hang_rank=$hang --set debug.hang_step=4 --out "$tmp/h$hang" 2>&1)
  code=$?
  elapsed=$(( $(date +%s) - start ))
  check "trainer, rank $hang hangs: ends non-zero (got $code)" '[ $code -ne 0 ] && [ $code -ne 124 ]'
  check "trainer, rank $hang hangs: ends within 40 s (took $elapsed s)" '[ $elapsed -le 40 ]'
  if [ $hang -eq 1 ]; then
    check "trainer: rank 0 names hung rank 1" 'grep -q "at step 4; waiting for rank(s) 1, which did not reach it" <<<"$out"'
  else
    check "trainer: rank 0 says the others wait for it" 'grep -q "ranks are waiting for rank(s) 0, which did not reach collective" <<<"$out"'
  fi
  [ $failed -eq 0 ] || echo "$out" | tail -20
done
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
