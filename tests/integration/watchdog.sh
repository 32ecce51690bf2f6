#!/usr/bin/env bash
# A rank that never reaches a collective: the watchdog of the waiting ranks must name the
# collective and the step and end the whole job with exit status 4 within the timeout, not hang.
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
[ $failed -eq 0 ] || echo "$out" | tail -20
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
