#!/usr/bin/env bash
# The Slurm job scripts on a real single-node Slurm (tools/slurm/test_slurm.sh): installs
# slurm-wlm and munge if missing, starts munged, slurmctld and slurmd, submits
# jobs/slurm/train.sbatch with this build's lowsync (4 tasks, --overcommit; srun --mpi=pmix and
# the mpirun fallback), a sweep job array and the long-run requeue, checks the outputs and stops
# the daemons by pid. Fails (with the reason) when Slurm cannot be set up, e.g. not root.
set -uo pipefail
src=${LOWSYNC_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
LOWSYNC=$1 exec bash "$src/tools/slurm/test_slurm.sh"
