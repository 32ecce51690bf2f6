#!/usr/bin/env bash
# The Slurm job scripts on a real single-node Slurm with this build's trainer
# (tools/slurm/test_slurm.sh): installs slurm-wlm and munge if missing, starts munged, slurmctld
# and slurmd, submits train.sbatch (stopped by the walltime signal, requeued, resumed),
# multinode.sbatch and a sweep through submit_sweep.sh (one array per rank count, a run stopped
# and resumed by its requeue), checks the outputs and stops the daemons by pid.
# Where Slurm cannot be set up (not root, no package, a daemon does not start) it prints
# "SKIPPED: <reason>" and exits 0; a failed check exits 1.
set -uo pipefail
src=${LOWSYNC_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
log=$(mktemp /tmp/lowsync-slurm-test.XXXXXX)
trap 'rm -f "$log"' EXIT
rc=0
LOWSYNC=$1 bash "$src/tools/slurm/test_slurm.sh" 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
if [[ $rc -eq 2 ]]; then
  echo "SKIPPED: Slurm could not be set up here: $(grep -m1 'SETUP FAILED' "$log" | sed 's/.*SETUP FAILED: //')"
  exit 0
fi
exit "$rc"
