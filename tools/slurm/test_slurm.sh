#!/usr/bin/env bash
# Tests the Slurm job scripts on a real Slurm on this one machine, with the real trainer. Installs
# slurm-wlm and munge from Debian if missing, starts a private munged, slurmctld and slurmd
# (loopback, non-default ports, all state in a temp dir; the node claims at least 4 CPUs), then
# submits from a copy of jobs/ and tools/, all at once so the jobs overlap (about 2 minutes on 2
# busy cores):
#   A. jobs/slurm/train.sbatch, 2 tasks (srun --mpi=pmix when srun has it, SRUN_FLAGS with a
#      quoted word), a 1500-step run; once the trainer is up, USR1 to the batch shell (what
#      --signal=B:USR1@120 sends at the walltime warning): the ranks checkpoint and exit 3, the job
#      requeues itself, the restart resumes and finishes all steps;
#   B. jobs/slurm/multinode.sbatch as --nodes=1 --ntasks-per-node=2 --cpus-per-task=2 with the
#      mpirun fallback and MPIRUN_FLAGS holding a quoted word: ranks = nodes x ntasks-per-node,
#      train.threads = SLURM_CPUS_PER_TASK;
#   C. jobs/slurm/submit_sweep.sh on a 4-run sweep with rank counts 1 and 2: one job array per
#      rank count (NumTasks = that count), every run done on its own rank count with all its
#      steps; one 2-rank run is stopped by USR1, requeued and resumed by tools/sweep.py (which must
#      not take the stopped run's summary.json for done); submitting again queues nothing.
# Every wait is bounded; the daemons it started are stopped by pid on exit.
# tests/integration/slurm.sh runs it under ctest (label slurm) and reports exit 2 as SKIPPED.
# Needs root. env: LOWSYNC (the trainer, default build/bin/lowsync), SLURM_TEST_PORT (default: the
#      first free pair from 16817 on, so parallel test runs on one machine do not collide; slurmd
#      uses +1), SLURM_TEST_KEEP=1 keeps the temp dir, SLURM_TEST_TIMEOUT (240 s for all jobs),
#      SLURM_TEST_STEPS (1500: the signalled runs' length; the signal must land before their end).
# Exit status: 0 all checks passed, 1 a check failed, 2 Slurm (or the trainer) could not be set up.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# The first port P >= 16817 with P and P+1 free on the loopback (unless SLURM_TEST_PORT is set).
free_port() {
  /usr/bin/python3 - <<'PY'
import socket
for p in range(16817, 17800, 64):
    try:
        for q in (p, p + 1):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError:
        pass
PY
}
port=${SLURM_TEST_PORT:-$(free_port)}
[[ -n $port ]] || port=16817
job_timeout=${SLURM_TEST_TIMEOUT:-240}
long_steps=${SLURM_TEST_STEPS:-1500}
node=$(hostname -s)
# The machine's CPUs (GNU nproc alone honours OMP_NUM_THREADS, which the tests set to 1).
cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc --all)
passed=0
failed=0
pids=()

say() { echo "test_slurm: [${SECONDS}s] $*"; }
die_setup() {
  say "SETUP FAILED: $*"
  exit 2
}
check() {  # check NAME COMMAND...: runs the command, counts and prints the result
  local name=$1
  shift
  if "$@"; then
    say "PASS $name"
    passed=$((passed + 1))
  else
    say "FAIL $name"
    failed=$((failed + 1))
  fi
}

[[ $(id -u) -eq 0 ]] || die_setup "must run as root (it starts slurmctld, slurmd and munged)"
trainer=${LOWSYNC:-$repo/build/bin/lowsync}
[[ -x $trainer ]] || die_setup "trainer $trainer not built (build it, or set LOWSYNC)"

# --- install --------------------------------------------------------------------------------
need_pkgs=()
for b in slurmctld slurmd sbatch; do command -v "$b" >/dev/null || need_pkgs=(slurm-wlm); done
command -v munged >/dev/null || need_pkgs+=(munge)
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
  say "installing ${need_pkgs[*]} (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"; } \
    >/tmp/lowsync-slurm-apt.log 2>&1 || die_setup "apt-get install ${need_pkgs[*]} failed (see /tmp/lowsync-slurm-apt.log)"
fi
getent passwd munge >/dev/null || die_setup "user 'munge' missing after installing munge"

tmp=$(mktemp -d /tmp/lowsync-slurm.XXXXXX) || die_setup "mktemp failed"
chmod 755 "$tmp"  # munged runs as the munge user and must reach its socket dir below

cleanup() {
  local rc=$?
  if ((${#pids[@]} > 1)) && kill -0 "${pids[1]}" 2>/dev/null; then
    # Cancel our jobs first: their slurmstepd outlive slurmd.
    timeout 10 scancel --quiet --user=root 2>/dev/null
    for _ in $(seq 50); do
      [[ -z $(timeout 5 squeue -h 2>/dev/null) ]] && break
      sleep 0.2
    done
  fi
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null
  done
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    for _ in $(seq 50); do
      kill -0 "${pids[i]}" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "${pids[i]}" 2>/dev/null
  done
  if [[ ${SLURM_TEST_KEEP:-0} == 1 ]]; then
    say "kept $tmp"
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- munge ----------------------------------------------------------------------------------
mkdir -p "$tmp/munge"
dd if=/dev/urandom of="$tmp/munge/munge.key" bs=1024 count=1 status=none
chown -R munge:munge "$tmp/munge"
chmod 755 "$tmp/munge"  # munged wants the socket dir searchable by all
chmod 400 "$tmp/munge/munge.key"
sock=$tmp/munge/munge.socket
setpriv --reuid=munge --regid=munge --clear-groups /usr/sbin/munged --foreground \
  --socket="$sock" --key-file="$tmp/munge/munge.key" --pid-file="$tmp/munge/munged.pid" \
  --log-file="$tmp/munge/munged.log" --seed-file="$tmp/munge/munged.seed" >"$tmp/munged.out" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  [[ -S $sock ]] && break
  kill -0 "${pids[0]}" 2>/dev/null || break
  sleep 0.2
done
if ! munge -S "$sock" -n </dev/null 2>/dev/null | unmunge -S "$sock" >/dev/null 2>&1; then
  cat "$tmp/munged.out" "$tmp/munge/munged.log" 2>/dev/null | tail -5
  die_setup "munged did not start (socket $sock)"
fi
say "munged up (pid ${pids[0]})"

# --- slurm.conf -----------------------------------------------------------------------------
# At least 4 CPUs on the node (config_overrides: slurmd takes slurm.conf's word for it), so the
# multi-node shape 2 tasks x 2 CPUs per node fits on a 2-core machine.
node_cpus=$((cpus < 4 ? 4 : cpus))
mkdir -p "$tmp/state" "$tmp/spool" "$tmp/log"
export SLURM_CONF=$tmp/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=lowsynctest
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock,cred_expire=10
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SrunPortRange=$((port + 10))-$((port + 60))
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# A requeued job may start again after the credential lifetime (cred_expire below); look for it
# every 2 s rather than at the default 30-60 s scheduler passes.
SchedulerParameters=bf_interval=2,sched_interval=2
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
SlurmctldTimeout=30
SlurmdTimeout=30
SlurmdParameters=config_overrides
NodeName=$node NodeAddr=127.0.0.1 CPUs=$node_cpus State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
EOF

# --- daemons --------------------------------------------------------------------------------
slurmctld -D -f "$SLURM_CONF" >"$tmp/log/slurmctld.out" 2>&1 &
pids+=($!)
up=0
for _ in $(seq 60); do
  kill -0 "${pids[1]}" 2>/dev/null || break
  if scontrol ping 2>/dev/null | grep -q "UP"; then up=1; break; fi
  sleep 0.5
done
if [[ $up != 1 ]]; then
  tail -n 8 "$tmp/log/slurmctld.out" "$tmp/log/slurmctld.log" 2>/dev/null
  die_setup "slurmctld did not come up on port $port"
fi
slurmd -D -f "$SLURM_CONF" -N "$node" >"$tmp/log/slurmd.out" 2>&1 &
pids+=($!)
state=""
for _ in $(seq 60); do
  kill -0 "${pids[2]}" 2>/dev/null || break
  state=$(sinfo -h -n "$node" -o %t 2>/dev/null)
  [[ $state == idle* ]] && break
  [[ $state == drain* || $state == down* ]] && scontrol update nodename="$node" state=resume 2>/dev/null
  sleep 0.5
done
if [[ $state != idle* ]]; then
  tail -n 8 "$tmp/log/slurmd.out" "$tmp/log/slurmd.log" 2>/dev/null
  die_setup "slurmd did not register node $node (state '${state:-none}')"
fi
say "slurmctld (pid ${pids[1]}) and slurmd (pid ${pids[2]}) up; node $node idle with $node_cpus CPUs ($cpus real)"
if srun --mpi=list 2>&1 | grep -qw pmix; then
  say "srun has the pmix plugin: jobs launch with srun --mpi=pmix"
else
  say "srun has no pmix plugin: jobs fall back to mpirun inside the allocation"
fi

# --- jobs -------------------------------------------------------------------------------------
say "trainer: $trainer"
# The job scripts run from a copy, so their runs/ outputs stay out of the repository.
mkdir -p "$tmp/repo"
cp -r "$repo/jobs" "$repo/tools" "$tmp/repo/"
root=$tmp/repo
cd "$root" || die_setup "cd $root"
pmix=0
srun --mpi=list 2>&1 | grep -qw pmix && pmix=1

job_state() { scontrol show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -1 | cut -d= -f2; }
# json_field FILE KEY [SUBKEY]: a summary.json field (python's str of it), empty if unreadable.
json_field() {
  /usr/bin/python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    v = v.get(k)
print(v)' "$@" 2>/dev/null
}
show_output() { say "--- $1 (last lines)"; tail -n "${2:-15}" "$1" 2>/dev/null | sed 's/^/    /'; }
# signal_when_started SPEC OUTPUT RUN_DIR: once the trainer's banner is in the job's OUTPUT (every
# rank is then past MPI_Init, inside main, where the stop signals are blocked and kept pending),
# USR1 to the batch shell of job SPEC, as --signal=B:USR1@T does at the walltime warning. The
# trainer stops at its next step boundary, however fast it runs. Returns 1 if the trainer never
# started or had already finished.
signal_when_started() {
  local spec=$1 output=$2 dir=$3 deadline=$((SECONDS + job_timeout))
  until grep -q 'lowsync: mlp (' "$output" 2>/dev/null; do
    if ((SECONDS > deadline)); then
      say "$spec: the trainer never started (no banner in $output)"
      return 1
    fi
    sleep 0.05
  done
  if [[ -f $dir/summary.json ]]; then
    say "$spec: the run in $dir finished before the signal (raise SLURM_TEST_STEPS)"
    return 1
  fi
  say "sending USR1 to the batch shell of job $spec (as --signal=B:USR1@120 does)"
  scancel --batch --signal=USR1 "$spec"
}
# wait_jobs ID...: waits (bounded, all together) until every task of the jobs has finished.
wait_jobs() {
  local deadline=$((SECONDS + job_timeout)) states
  while ((SECONDS < deadline)); do
    states=$(squeue -h -j "$(IFS=,; echo "$*")" -o %T 2>/dev/null)
    [[ -z $states ]] && return 0
    sleep 1
  done
  say "jobs $* still not finished after ${job_timeout}s (states: $(echo "$states" | sort | uniq -c | xargs)); cancelling"
  scancel "$@" 2>/dev/null
  return 1
}
submit() {  # submit NAME SBATCH-ARGS...: prints the job id, or nothing (and says why)
  local name=$1 id
  shift
  if ! id=$(sbatch --parsable "$@" 2>"$tmp/sbatch.err"); then
    say "sbatch of $name failed: $(cat "$tmp/sbatch.err")" >&2
    return 1
  fi
  echo "${id%%;*}"
}

quick="eval.every=0 log.every=20 data.train_limit=1000"

# A. train.sbatch: 2 tasks, stopped by the walltime signal, requeued, resumed.
# (periodic averaging: a fraction of allreduce's traffic, so the resumed run ends sooner on busy cores)
a_sets="train.steps=$long_steps sync.strategy=periodic sync.period=5 $quick"
a_srun_flags="--job-name='lowsync step' --label"
a=$(submit train.sbatch --ntasks=2 --time=10 --chdir="$root" \
  --output="$tmp/train-%j.out" \
  --export=ALL,LOWSYNC="$trainer",LOWSYNC_ROOT="$root",EXTRA_SETS="$a_sets",SRUN_FLAGS="$a_srun_flags" \
  "$root/jobs/slurm/train.sbatch")
if [[ -n $a ]]; then say "A: train.sbatch submitted as job $a"; else failed=$((failed + 1)); fi

# B. multinode.sbatch on this one node: 1 node x 2 tasks x 2 CPUs, mpirun inside the allocation.
# (Few steps: 2 ranks x 2 threads on 2 busy cores is slow.)
b_mpirun_flags="-x 'LOWSYNC_TEST_NOTE=a b'"
b=$(submit multinode.sbatch --nodes=1 --ntasks-per-node=2 --cpus-per-task=2 --time=10 \
  --chdir="$root" --output="$tmp/multinode-%j.out" \
  --export=ALL,LOWSYNC="$trainer",LOWSYNC_ROOT="$root",LAUNCHER=mpirun,EXTRA_SETS="train.steps=40 $quick",MPIRUN_FLAGS="$b_mpirun_flags" \
  "$root/jobs/slurm/multinode.sbatch")
if [[ -n $b ]]; then say "B: multinode.sbatch submitted as job $b"; else failed=$((failed + 1)); fi

# C. A sweep with rank counts 1 and 2: runs 0 (allreduce n1), 1 (allreduce n2), 2 (periodic n1),
# 3 (periodic n2); the periodic runs are long enough to be signalled.
cat >"$tmp/sweep.toml" <<TOML
name = "slurmtest"
out_root = "runs/sweep"
strategies = ["allreduce", "periodic"]
ranks = [1, 2]
[set]
"train.steps" = 60
"eval.every" = 0
"log.every" = 20
"data.train_limit" = 1000
[strategy.periodic]
"sync.period" = 5
"train.steps" = $long_steps
TOML
declare -A sweep_job=()
LOWSYNC=$trainer bash "$root/jobs/slurm/submit_sweep.sh" "$tmp/sweep.toml" --time=10 \
  --output="$tmp/sweep-%A_%a.out" >"$tmp/submit.out" 2>&1
sed 's/^/    /' "$tmp/submit.out"
while read -r _ id ranks _; do
  sweep_job[$ranks]=${id%:}
done < <(grep '^submitted ' "$tmp/submit.out")
say "C: sweep arrays: 1 rank -> job ${sweep_job[1]:-none}, 2 ranks -> job ${sweep_job[2]:-none}"
check "C: submit_sweep.sh submitted one array per rank count" test "${#sweep_job[@]}" == 2

# The walltime signal, once each target trainer runs.
a_signalled=1 c_signalled=1
[[ -n $a ]] && { signal_when_started "$a" "$tmp/train-$a.out" "$root/runs/$a" || a_signalled=0; }
sweep_runs=()
mapfile -t sweep_runs < <(/usr/bin/python3 "$root/tools/sweep.py" list "$tmp/sweep.toml" --format tsv | cut -f4)
if [[ -n ${sweep_job[2]:-} && ${#sweep_runs[@]} -eq 4 ]]; then
  signal_when_started "${sweep_job[2]}_3" "$tmp/sweep-${sweep_job[2]}_3.out" "$root/${sweep_runs[3]}" ||
    c_signalled=0
fi
jobs=()
for j in "$a" "$b" "${sweep_job[@]}"; do [[ -n $j ]] && jobs+=("$j"); done
((${#jobs[@]} > 0)) && wait_jobs "${jobs[@]}"
say "all jobs left the queue"

# --- A checks ---------------------------------------------------------------------------------
if [[ -n $a ]]; then
  out=$tmp/train-$a.out
  sum=$root/runs/$a/summary.json
  show_output "$out" 8
  check "A: USR1 reached the running trainer" test "$a_signalled" == 1
  check "A: train.sbatch requeued itself after exit 3" grep -q "requeueing job $a " "$out"
  check "A: the restart resumed from runs/$a" grep -q "resuming from runs/$a" "$out"
  check "A: summary.json resumed_from runs/$a" grep -Eq "^runs/$a(/|$)" <<< "$(json_field "$sum" resumed_from)"
  check "A: the resumed run finished all $long_steps steps, not stopped" \
    test "$(json_field "$sum" steps)/$(json_field "$sum" stopped_early)" == "$long_steps/False"
  check "A: summary.json ranks == 2" test "$(json_field "$sum" ranks)" == 2
  check "A: test accuracy > 0.5" /usr/bin/python3 -c \
    'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["final_test_accuracy"] > 0.5 else 1)' "$sum"
  check "A: job completed" test "$(job_state "$a")" == COMPLETED
  if [[ $pmix == 1 ]]; then
    line=$(grep -m1 '^launch.sh: ' "$out")
    check "A: launched with srun --mpi=pmix" grep -q '^launch.sh: srun --mpi=pmix' <<< "$line"
    check "A: SRUN_FLAGS' quoted word reached srun as one word" /usr/bin/python3 -c '
import shlex, sys
words = shlex.split(sys.argv[1][len("launch.sh: "):])
sys.exit(0 if "--job-name=lowsync step" in words and "--label" in words else 1)' "$line"
    check "A: srun --label (from SRUN_FLAGS) labelled the ranks' output" grep -q '^0: lowsync: ' "$out"
  fi
fi

# --- B checks ---------------------------------------------------------------------------------
if [[ -n $b ]]; then
  out=$tmp/multinode-$b.out
  sum=$root/runs/$b/summary.json
  show_output "$out" 4
  line=$(grep -m1 '^launch.sh: ' "$out")
  check "B: multinode.sbatch completed" test "$(job_state "$b")" == COMPLETED
  check "B: launched with mpirun inside the allocation" grep -q '^launch.sh: mpirun ' <<< "$line"
  check "B: MPIRUN_FLAGS' quoted word reached mpirun as one word" /usr/bin/python3 -c '
import shlex, sys
words = shlex.split(sys.argv[1][len("launch.sh: "):])
sys.exit(0 if "LOWSYNC_TEST_NOTE=a b" in words else 1)' "$line"
  check "B: ranks == nodes x ntasks-per-node == 2" test "$(json_field "$sum" ranks)" == 2
  check "B: all 40 steps, not stopped" test "$(json_field "$sum" steps)/$(json_field "$sum" stopped_early)" == 40/False
  check "B: train.threads == 2 (SLURM_CPUS_PER_TASK)" test "$(json_field "$sum" config train.threads)" == 2
fi

# --- C checks ---------------------------------------------------------------------------------
for ranks in 1 2; do
  id=${sweep_job[$ranks]:-}
  [[ -n $id ]] || continue
  check "C: the $ranks-rank array's tasks hold $ranks tasks each" test \
    "$(scontrol show job "$id" 2>/dev/null | grep -o 'NumTasks=[0-9]*' | sort -u | xargs)" == "NumTasks=$ranks"
done
if ((${#sweep_runs[@]} == 4)); then
  out3=$tmp/sweep-${sweep_job[2]:-x}_3.out
  show_output "$out3" 10
  expect_ranks=(1 2 1 2)
  expect_steps=(60 60 "$long_steps" "$long_steps")
  for i in 0 1 2 3; do
    sum=$root/${sweep_runs[i]}/summary.json
    check "C: run $i ran on ${expect_ranks[i]} ranks" test "$(json_field "$sum" ranks)" == "${expect_ranks[i]}"
    check "C: run $i finished all ${expect_steps[i]} steps, not stopped" \
      test "$(json_field "$sum" steps)/$(json_field "$sum" stopped_early)" == "${expect_steps[i]}/False"
  done
  check "C: USR1 reached the running trainer of run 3" test "$c_signalled" == 1
  check "C: the stopped run requeued its array task" grep -q "requeueing job ${sweep_job[2]:-x}_3 " "$out3"
  check "C: the requeued task resumed it (not skipped)" grep -q "stopped (resuming from" "$out3"
  check "C: run 3 summary.json has resumed_from" \
    test -n "$(json_field "$root/${sweep_runs[3]}/summary.json" resumed_from)"
  check "C: tools/sweep.py lists all 4 runs done" test \
    "$(/usr/bin/python3 "$root/tools/sweep.py" list "$tmp/sweep.toml" --format tsv --state done | wc -l)" == 4
  LOWSYNC=$trainer bash "$root/jobs/slurm/submit_sweep.sh" "$tmp/sweep.toml" >"$tmp/submit2.out" 2>&1
  check "C: submitting again queues nothing" grep -q "nothing to submit" "$tmp/submit2.out"
else
  say "tools/sweep.py list gave ${#sweep_runs[@]} runs, not 4"
  failed=$((failed + 1))
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
