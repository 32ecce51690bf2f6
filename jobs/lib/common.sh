# Shared pieces of the job scripts (sourced, not run): repository root, trainer path, splitting
# quoted word lists from the environment, the `lowsync train` argument list, running a job step
# so that Slurm's warning signal reaches the trainer, and the train job body with its requeue.
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

# lowsync_split_words ARRAY NAME VALUE: splits VALUE (the environment variable NAME, named in
# errors) into words as a POSIX shell would split a quoted command line, but without expanding
# anything ($, `, globs stay literal), and stores them in the array ARRAY. So
# SRUN_FLAGS='--constraint="a b" --exclusive' gives two words, not three, and a value can never
# run a command. An unbalanced quote is a one-line error.
lowsync_split_words() {
  local -n _words=$1
  _words=()
  [[ -z ${3//[[:space:]]/} ]] && return 0
  # The splitter ends a good list with the word "\001ok" (a control character no flag holds), so a
  # failed split (error on stderr, no marker) is told from an empty one.
  mapfile -d '' -t _words < <("$(lowsync_python)" -c '
import shlex, sys
try:
    words = shlex.split(sys.argv[2], comments=False, posix=True)
except ValueError as e:
    sys.exit(f"lowsync job: {sys.argv[1]}: {e} in {sys.argv[2]!r} (quote words as in a shell)")
sys.stdout.write("".join(w + "\0" for w in words + ["\001ok"]))
' "$2" "$3")
  if [[ ${#_words[@]} -eq 0 || ${_words[-1]} != $'\001ok' ]]; then
    _words=()
    return 1
  fi
  unset '_words[-1]'
}

# True when DIR holds a checkpoint to resume from (the trainer's default <out>/checkpoints).
lowsync_has_checkpoint() {
  [[ -d $1/checkpoints ]] && [[ -n $(ls -A "$1/checkpoints" 2>/dev/null) ]]
}

# Fills the array TRAIN_ARGS with `train` arguments: --config $CONFIG; train.threads from
# SLURM_CPUS_PER_TASK (sbatch --cpus-per-task) unless EXTRA_SETS or the arguments set it; --set
# for each word of $EXTRA_SETS (key=value words, quoted as in a shell when a value has spaces);
# --out $1; --resume $RESUME when set; then any further arguments.
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
  lowsync_split_words sets EXTRA_SETS "${EXTRA_SETS:-}" || return 1
  for s in "${sets[@]}"; do
    if [[ $s != *=* ]]; then
      echo "lowsync job: EXTRA_SETS entry '$s' is not key=value" >&2
      return 1
    fi
  done
  # Each rank's oneDNN threads fill the CPUs Slurm gave its task (a --set after this one, from
  # EXTRA_SETS or the arguments, still wins; a CONFIG file's value does not).
  if [[ ${SLURM_CPUS_PER_TASK:-} =~ ^[1-9][0-9]*$ ]] && ! lowsync_sets_key train.threads "${sets[@]}" "$@"; then
    TRAIN_ARGS+=(--set "train.threads=$SLURM_CPUS_PER_TASK")
  fi
  for s in "${sets[@]}"; do
    TRAIN_ARGS+=(--set "$s")
  done
  TRAIN_ARGS+=(--out "$out")
  if [[ -n ${RESUME:-} ]]; then
    TRAIN_ARGS+=(--resume "$RESUME")
  elif [[ ${FORCE:-0} == 1 ]]; then
    TRAIN_ARGS+=(--force)
  fi
  TRAIN_ARGS+=("$@")
}

# lowsync_sets_key KEY WORDS...: true when a word is KEY=... (a --set value or EXTRA_SETS entry).
lowsync_sets_key() {
  local key=$1 w
  shift
  for w in "$@"; do
    [[ $w == "$key="* ]] && return 0
  done
  return 1
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

# lowsync_requeue_or_exit NAME RC JOBSPEC: the end of a job. RC 3 (the trainer stopped on the
# walltime signal after writing a checkpoint) requeues JOBSPEC (the job, or array job_task) so it
# resumes, unless it was requeued MAX_REQUEUES (20) times already; any other RC is the job's.
lowsync_requeue_or_exit() {
  local name=$1 rc=$2 spec=$3 restarts=${SLURM_RESTART_COUNT:-0}
  if [[ $rc -ne 3 ]]; then
    exit "$rc"
  fi
  if [[ -z ${SLURM_JOB_ID:-} ]]; then
    echo "$name: stopped after a checkpoint; not under Slurm, so run it again to resume" >&2
    exit 3
  fi
  if [[ $restarts -ge ${MAX_REQUEUES:-20} ]]; then
    echo "$name: stopped after a checkpoint, but already requeued $restarts times (MAX_REQUEUES); not again" >&2
    exit 3
  fi
  echo "$name: requeueing job $spec to resume (restart $((restarts + 1)))" >&2
  if ! scontrol requeue "$spec"; then
    echo "$name: scontrol requeue $spec failed (submitted without --requeue?); resubmit to resume" >&2
    exit 3
  fi
  exit 0
}

# lowsync_train_job NAME [TRAIN ARGS...]: the body of train.sbatch, long.sbatch and
# multinode.sbatch. One run over the allocation's tasks in $OUT (runs/<job id>); when $OUT holds
# a checkpoint (a requeued job) it resumes from it; exit 3 after the walltime signal requeues.
lowsync_train_job() {
  local name=$1
  shift
  local root lowsync ranks out restarts
  root=$(lowsync_root) || exit 2
  lowsync=$(lowsync_binary "$root") || exit 2
  ranks=${RANKS:-${SLURM_NTASKS:-4}}
  out=${OUT:-runs/${SLURM_JOB_ID:-manual}}
  restarts=${SLURM_RESTART_COUNT:-0}
  if [[ -z ${RESUME:-} ]] && lowsync_has_checkpoint "$out"; then
    RESUME=$out
  elif [[ -z ${RESUME:-} && $restarts -gt 0 ]]; then
    FORCE=1  # a requeued job whose first start left no checkpoint starts over in its own folder
  fi
  lowsync_train_args "$out" "$@" || exit 2
  mkdir -p "$out"
  echo "$name: job ${SLURM_JOB_ID:-?} start $((restarts + 1)) on ${SLURM_JOB_NODELIST:-$(hostname)}:" \
    "$ranks ranks x ${SLURM_CPUS_PER_TASK:-1} CPUs -> $out${RESUME:+ (resuming from $RESUME)}" >&2
  # Right after a requeue, slurmd may still be tearing down the previous instance's step (same
  # job id) and the new step then fails to launch, sometimes with srun exiting 0. The trainer
  # writes summary.json whenever it runs to the end or stops on a signal, so "exit 0 and no new
  # summary.json" means the trainer never ran: retry the launch a few times before giving up.
  local stamp="$out/.launch-stamp" attempt rc=0
  for attempt in 1 2 3 4; do
    touch "$stamp"
    rc=0
    lowsync_run_step "$root/jobs/lib/launch.sh" "$ranks" "$lowsync" "${TRAIN_ARGS[@]}" || rc=$?
    echo "$name: trainer exit status $rc" >&2
    if [[ $rc -ne 0 || $out/summary.json -nt $stamp ]]; then
      break
    fi
    if [[ $attempt -eq 4 ]]; then
      echo "$name: the job step exited 0 but the trainer wrote no summary.json in 4 launches; giving up" >&2
      rc=1
      break
    fi
    echo "$name: the job step exited 0 but the trainer wrote no summary.json (launch failed?); retrying in $((attempt * 5)) s" >&2
    # A USR1 during the pause (walltime warning) must not kill this shell: nothing runs, so the
    # job simply requeues from its last checkpoint.
    trap 'rc=3' USR1
    sleep $((attempt * 5))
    trap - USR1
    if [[ $rc -eq 3 ]]; then break; fi
  done
  rm -f "$stamp"
  lowsync_requeue_or_exit "$name" "$rc" "${SLURM_JOB_ID:-}"
}
