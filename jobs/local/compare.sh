#!/usr/bin/env bash
# Comparison report of finished runs: report.md, table.csv and PNG plots in $OUT.
#
# env:  OUT (runs/compare), TARGET_ACC (0.85), PYTHON (Debian's /usr/bin/python3, which has
#       matplotlib)
# args: run folders, or a sweep's output folder (its finished runs are taken).
# e.g.  OUT=runs/report jobs/local/compare.sh runs/sweeps/strategies
set -euo pipefail
# shellcheck source=jobs/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
root=$(lowsync_root)
if [[ $# -eq 0 ]]; then
  echo "compare.sh: usage: compare.sh RUN_DIR... (env OUT, TARGET_ACC)" >&2
  exit 2
fi
exec "$(lowsync_python)" "$root/tools/compare/compare.py" "$@" \
  --out "${OUT:-runs/compare}" --target-acc "${TARGET_ACC:-0.85}"
