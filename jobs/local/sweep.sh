#!/usr/bin/env bash
# Runs every incomplete run of a sweep one after another with mpirun (finished runs are skipped;
# stopped or interrupted ones resume from their latest checkpoint), then writes the
# comparison report of all finished runs to <out_root>/report.
#
# env:  LOWSYNC (build/bin/lowsync), OUT (overrides the sweep's out_root), COMPARE (1; 0 = no
#       report), TARGET_ACC (0.85), DRY_RUN (1 = print the commands only)
# e.g.  jobs/local/sweep.sh jobs/sweeps/smoke.toml
set -euo pipefail
# shellcheck source=jobs/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
root=$(lowsync_root)
py=$(lowsync_python)
if [[ $# -ne 1 ]]; then
  echo "sweep.sh: usage: sweep.sh SWEEP.toml (env LOWSYNC, OUT, COMPARE, TARGET_ACC, DRY_RUN)" >&2
  exit 2
fi
sweep=$1
opts=()
[[ -n ${OUT:-} ]] && opts+=(--out-root "$OUT")
[[ -n ${LOWSYNC:-} ]] && opts+=(--lowsync "$LOWSYNC")
[[ ${DRY_RUN:-0} == 1 ]] && opts+=(--dry-run)
rc=0
LAUNCHER=${LAUNCHER:-mpirun} "$py" "$root/tools/sweep.py" run-local "$sweep" "${opts[@]}" || rc=$?
if [[ ${COMPARE:-1} == 1 && ${DRY_RUN:-0} != 1 ]]; then
  finished=()
  while IFS=$'\t' read -r _ _ _ dir _; do
    finished+=("$dir")
  done < <("$py" "$root/tools/sweep.py" list "$sweep" --format tsv --state done ${OUT:+--out-root "$OUT"})
  if [[ ${#finished[@]} -gt 0 ]]; then
    report=$(dirname "${finished[0]}")/report
    "$py" "$root/tools/compare/compare.py" "${finished[@]}" --out "$report" \
      --target-acc "${TARGET_ACC:-0.85}" || rc=$?
  fi
fi
exit "$rc"
