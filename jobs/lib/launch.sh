#!/usr/bin/env bash
# Starts RANKS copies of a command as one MPI job: `srun --mpi=pmix` inside a Slurm allocation
# when srun has the pmix plugin, mpirun otherwise (also inside an allocation, where Open MPI
# reads the node list from Slurm). Every job script and tools/sweep.py launch through here, so
# the launcher flags live in one place.
#
# usage: jobs/lib/launch.sh RANKS COMMAND [ARGS...]
# env:   LAUNCHER=auto|srun|mpirun (default auto), MPIRUN_FLAGS, SRUN_FLAGS (extra words),
#        LAUNCH_DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

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
case $launcher in
  srun)
    cmd=(srun --mpi=pmix --ntasks="$ranks" --kill-on-bad-exit=1)
    # A sweep may run fewer ranks than the allocation holds; more needs --overcommit.
    if [[ -n ${SLURM_NTASKS:-} && $ranks -gt $SLURM_NTASKS ]]; then
      cmd+=(--overcommit)
    fi
    # shellcheck disable=SC2206  # SRUN_FLAGS is a list of words on purpose
    cmd+=(${SRUN_FLAGS:-})
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
    # shellcheck disable=SC2206
    cmd+=(${MPIRUN_FLAGS:-})
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
echo "launch.sh: ${cmd[*]}" >&2
exec "${cmd[@]}"
