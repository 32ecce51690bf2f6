#!/usr/bin/env bash
# Starts RANKS copies of a command as one MPI job: `srun --mpi=pmix` inside a Slurm allocation
# when srun has the pmix plugin, mpirun otherwise (also inside an allocation, where Open MPI
# reads the node list from Slurm). Every job script and tools/sweep.py launch through here, so
# the launcher flags live in one place.
#
# usage: jobs/lib/launch.sh RANKS COMMAND [ARGS...]
# env:   LAUNCHER=auto|srun|mpirun (default auto); SRUN_FLAGS, MPIRUN_FLAGS: extra launcher
#        flags, split like a shell line but never expanded (SRUN_FLAGS='--constraint="a b"' is one
#        flag); LAUNCH_DRY_RUN=1 prints the command instead of running it.
# The command is printed shell-quoted (stderr), so it can be copied and run again.
set -euo pipefail
# shellcheck source=jobs/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ $# -lt 2 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "launch.sh: usage: launch.sh RANKS COMMAND [ARGS...] (got RANKS='${1:-}')" >&2
  exit 2
fi
ranks=$1
shift

srun_has_pmix() {
  command -v srun >/dev/null 2>&1 || return 1
  srun --mpi=list 2>&1 | grep -qw pmix
}

launcher=${LAUNCHER:-auto}
if [[ $launcher == auto ]]; then
  if [[ -n ${SLURM_JOB_ID:-} ]] && srun_has_pmix; then
    launcher=srun
  else
    launcher=mpirun
  fi
fi

cmd=()
flags=()
case $launcher in
  srun)
    cmd=(srun --mpi=pmix --ntasks="$ranks" --kill-on-bad-exit=1)
    # A sweep may run fewer ranks than the allocation holds; more needs --overcommit.
    if [[ -n ${SLURM_NTASKS:-} && $ranks -gt $SLURM_NTASKS ]]; then
      cmd+=(--overcommit)
    fi
    # Since Slurm 22.05 srun no longer inherits the job's --cpus-per-task: ask for it again, or
    # every rank's threads share one CPU.
    if [[ ${SLURM_CPUS_PER_TASK:-} =~ ^[1-9][0-9]*$ ]]; then
      cmd+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
    fi
    lowsync_split_words flags SRUN_FLAGS "${SRUN_FLAGS:-}" || exit 2
    cmd+=("${flags[@]}")
    ;;
  mpirun)
    if ! command -v mpirun >/dev/null 2>&1; then
      echo "launch.sh: mpirun not found (apt-get install openmpi-bin) and srun with pmix unavailable" >&2
      exit 2
    fi
    # -q: no launcher banner after a rank's clean non-zero exit; the trainer's one-line error
    # says what went wrong.
    cmd=(mpirun -q -n "$ranks")
    if [[ $(id -u) -eq 0 ]]; then
      cmd+=(--allow-run-as-root)
    fi
    # Inside an allocation the slots are Slurm's tasks; outside, the cores of this machine.
    # (getconf, not nproc: GNU nproc honours OMP_NUM_THREADS, which runs set to 1.)
    slots=${SLURM_NTASKS:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc --all)}
    if [[ $ranks -gt $slots ]]; then
      cmd+=(--oversubscribe)
    fi
    lowsync_split_words flags MPIRUN_FLAGS "${MPIRUN_FLAGS:-}" || exit 2
    cmd+=("${flags[@]}")
    ;;
  *)
    echo "launch.sh: LAUNCHER must be auto, srun or mpirun (got '$launcher')" >&2
    exit 2
    ;;
esac

cmd+=("$@")
if [[ ${LAUNCH_DRY_RUN:-0} == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
  exit 0
fi
{
  printf 'launch.sh:'
  printf ' %q' "${cmd[@]}"
  printf '\n'
} >&2
exec "${cmd[@]}"
