# Shared pieces of the job scripts (sourced, not run): repository root, trainer path, the
# `lowsync train` argument list from env settings, and running a job step so that Slurm's
# warning signal reaches the trainer.
# shellcheck shell=bash

# The repository root: $LOWSYNC_ROOT, else Slurm's submit dir, else this file's grandparent.
# (Slurm runs a copy of the batch script from its spool dir, so the script's own path is useless.)
lowsync_root() {
  local root=${LOWSYNC_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}}
  if [[ ! -x $root/jobs/lib/launch.sh ]]; then
    echo "lowsync job: $root is not the lowsync repository (submit from its root or set LOWSYNC_ROOT)" >&2
    return 1
  fi
  echo "$root"
}

# Debian's python3 has matplotlib; a pyenv or venv python3 earlier on PATH may not.
lowsync_python() {
  if [[ -n ${PYTHON:-} ]]; then echo "$PYTHON"
  elif [[ -x /usr/bin/python3 ]]; then echo /usr/bin/python3
  else echo python3
  fi
}

lowsync_binary() {
  local bin=${LOWSYNC:-$1/build/bin/lowsync}
  if [[ ! -x $bin ]]; then
    echo "lowsync job: trainer not found or not executable: $bin (build it, or set LOWSYNC)" >&2
    return 1
  fi
  echo "$bin"
}

# True when DIR holds a checkpoint to resume from (the trainer's default <out>/checkpoints).
lowsync_has_checkpoint() {
  [[ -d $1/checkpoints ]] && [[ -n $(ls -A "$1/checkpoints" 2>/dev/null) ]]
}

# Fills the array TRAIN_ARGS with `train` arguments: --config $CONFIG, --set for each word of
# $EXTRA_SETS (key=value, whitespace-separated; values cannot contain spaces), --out $1,
# --resume $RESUME when set, then any further arguments.
lowsync_train_args() {
  local out=$1
  shift
  TRAIN_ARGS=(train)
  if [[ -n ${CONFIG:-} ]]; then
    if [[ ! -f $CONFIG ]]; then
      echo "lowsync job: CONFIG file not found: $CONFIG" >&2
      return 1
    fi
    TRAIN_ARGS+=(--config "$CONFIG")
  fi
  local sets=() s
  read -ra sets <<< "${EXTRA_SETS:-}"
  for s in "${sets[@]}"; do
    if [[ $s != *=* ]]; then
      echo "lowsync job: EXTRA_SETS entry '$s' is not key=value" >&2
      return 1
    fi
    TRAIN_ARGS+=(--set "$s")
  done
  TRAIN_ARGS+=(--out "$out")
  if [[ -n ${RESUME:-} ]]; then
    TRAIN_ARGS+=(--resume "$RESUME")
  fi
  TRAIN_ARGS+=("$@")
}

# Runs a command in the background and forwards USR1 and TERM to it until it exits; returns its
# exit status. Slurm's `--signal=B:USR1@T` signals only the batch shell, which is busy in `wait`;
# srun and Open MPI's mpirun both pass USR1 on to every rank.
_lowsync_step_pid=""
_lowsync_forward() {
  echo "lowsync job: got SIG$1, forwarding to pid $_lowsync_step_pid" >&2
  [[ -n $_lowsync_step_pid ]] && kill -s "$1" "$_lowsync_step_pid" 2>/dev/null
  return 0
}
lowsync_run_step() {
  "$@" &
  _lowsync_step_pid=$!
  trap '_lowsync_forward USR1' USR1
  trap '_lowsync_forward TERM' TERM
  # A trapped signal makes `wait` return early (status > 128) while the step still runs.
  while kill -0 "$_lowsync_step_pid" 2>/dev/null; do
    wait "$_lowsync_step_pid" || true
  done
  local rc=0
  wait "$_lowsync_step_pid" || rc=$?
  trap - USR1 TERM
  _lowsync_step_pid=""
  return "$rc"
}
