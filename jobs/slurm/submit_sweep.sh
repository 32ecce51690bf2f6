#!/usr/bin/env bash
# Submits a sweep to Slurm as one job array per rank count: the runs with R ranks go to an array
# with --ntasks=R, so no task holds (or waits for) more CPUs than its run uses. Runs already done
# are left out, so submitting again queues only what is left (stopped runs resume).
#
# usage: jobs/slurm/submit_sweep.sh SWEEP.toml [sbatch options...]
#        (options go to every array, e.g. --time=02:00:00 --cpus-per-task=4 --account=proj;
#        --array and --ntasks are set here)
# env:   SWEEP_OUT (overrides the sweep's out_root), THROTTLE (N: at most N tasks of each array run
#        at once), DRY_RUN=1 (print the sbatch commands only), LOWSYNC, LAUNCHER, SRUN_FLAGS
#        (passed to the jobs through sbatch's default --export=ALL)
# Prints each sbatch command shell-quoted, then "submitted <job id>: <ranks> ranks, <n> runs".
set -euo pipefail
# shellcheck source=jobs/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
root=$(lowsync_root)
py=$(lowsync_python)
if [[ $# -lt 1 || $1 == -* ]]; then
  echo "submit_sweep.sh: usage: submit_sweep.sh SWEEP.toml [sbatch options...]" >&2
  exit 2
fi
sweep=$1
shift
throttle=""
if [[ -n ${THROTTLE:-} ]]; then
  if [[ ! $THROTTLE =~ ^[1-9][0-9]*$ ]]; then
    echo "submit_sweep.sh: THROTTLE must be a positive integer (got '$THROTTLE')" >&2
    exit 2
  fi
  throttle="%$THROTTLE"
fi
groups=$("$py" "$root/tools/sweep.py" slurm-groups "$sweep" ${SWEEP_OUT:+--out-root "$SWEEP_OUT"}) || exit 2
if [[ -z $groups ]]; then
  echo "submit_sweep.sh: every run of $sweep is done; nothing to submit"
  exit 0
fi
if [[ ${DRY_RUN:-0} != 1 ]] && ! command -v sbatch >/dev/null 2>&1; then
  echo "submit_sweep.sh: sbatch not found (not on a Slurm login node?); jobs/local/sweep.sh runs a sweep here" >&2
  exit 2
fi
# The jobs find the repository through LOWSYNC_ROOT (sbatch exports the environment) and run in
# this folder, where the sweep's relative paths point.
export LOWSYNC_ROOT=$root
while IFS=$'\t' read -r ranks spec count; do
  cmd=(sbatch --parsable --array="$spec$throttle" "$@" --ntasks="$ranks"
       "$root/jobs/slurm/sweep.sbatch" "$sweep")
  printf 'submit_sweep.sh:'
  printf ' %q' "${cmd[@]}"
  printf '\n'
  [[ ${DRY_RUN:-0} == 1 ]] && continue
  id=$("${cmd[@]}")
  echo "submitted ${id%%;*}: $ranks ranks, $count runs"
done <<< "$groups"
