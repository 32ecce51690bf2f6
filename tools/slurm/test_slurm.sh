#!/usr/bin/env bash
# Tests the Slurm job scripts on a real Slurm on this one machine. Installs slurm-wlm and munge
# from Debian if missing, starts a private munged, slurmctld and slurmd (loopback, non-default
# ports, all state in a temp dir), then submits from a copy of jobs/ and tools/:
#   1. jobs/slurm/train.sbatch: 4 tasks on this machine's CPUs (--overcommit), a tiny run, once
#      with srun --mpi=pmix and once with the mpirun fallback; summary.json must say ranks = 4;
#   2. jobs/slurm/sweep.sbatch: a 2-task job array; each task's summary.json must say ranks = 2;
#   3. jobs/slurm/long.sbatch: USR1 to the batch shell (what --signal=B:USR1@120 sends) must reach
#      the ranks, end in exit 3 + `scontrol requeue`, and the restart must pass --resume.
# The trainer is $LOWSYNC, else build/bin/lowsync, else tools/slurm/stub_trainer.c built with
# mpicc; test 3 runs the real trainer (USR1 -> checkpoint, exit 3 -> requeue -> --resume -> all
# steps done); SLURM_TEST_LONG=stub runs it with the stub instead. Every wait is bounded; the daemons it started are
# stopped by pid on exit. tests/integration/slurm.sh runs it under ctest (tools/test.sh, CI).
# Needs root. env: SLURM_TEST_PORT (default: the first free pair from 16817 on, so parallel test
#      runs on one machine do not collide; slurmd uses +1), SLURM_TEST_KEEP=1 keeps the temp dir,
#      SLURM_TEST_TIMEOUT (180 s per job), SLURM_TEST_LONG=stub|real, EXTRA_SETS (added to the
#      real trainer's settings).
# Exit status: 0 all checks passed, 1 a check failed, 2 Slurm could not be set up.
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
long_mode=${SLURM_TEST_LONG:-real}
job_timeout=${SLURM_TEST_TIMEOUT:-180}
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
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
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
say "slurmctld (pid ${pids[1]}) and slurmd (pid ${pids[2]}) up; node $node idle with $cpus CPUs"
if srun --mpi=list 2>&1 | grep -qw pmix; then
  say "srun has the pmix plugin: jobs launch with srun --mpi=pmix"
else
  say "srun has no pmix plugin: jobs fall back to mpirun inside the allocation"
fi

# --- trainer --------------------------------------------------------------------------------
stub=""
if command -v mpicc >/dev/null; then
  mkdir -p "$tmp/stub"
  if mpicc -O1 -o "$tmp/stub/lowsync" "$repo/tools/slurm/stub_trainer.c" 2>"$tmp/stub/cc.log"; then
    stub=$tmp/stub/lowsync
  else
    say "note: could not build the stub trainer: $(head -1 "$tmp/stub/cc.log")"
  fi
fi
trainer=${LOWSYNC:-$repo/build/bin/lowsync}
if [[ ! -x $trainer ]]; then
  [[ -n $stub ]] || die_setup "no trainer: $trainer missing and no mpicc to build the stub"
  say "trainer $trainer not built: using the stub MPI trainer (tools/slurm/stub_trainer.c)"
  trainer=$stub
else
  say "trainer: $trainer"
fi

# The job scripts run from a copy, so their runs/<job id>/ outputs stay out of the repository.
mkdir -p "$tmp/repo"
cp -r "$repo/jobs" "$repo/tools" "$tmp/repo/"
root=$tmp/repo

job_state() { scontrol show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -1 | cut -d= -f2; }
# wait_job ID: waits (bounded) until every task of the job has finished; prints the states.
wait_job() {
  local id=$1 deadline=$((SECONDS + job_timeout)) states
  while ((SECONDS < deadline)); do
    states=$(squeue -h -j "$id" -o %T 2>/dev/null)
    if [[ -z $states ]]; then
      scontrol show job "$id" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 | sort | uniq -c | xargs
      return 0
    fi
    sleep 1
  done
  say "job $id still not finished after ${job_timeout}s (states: $(echo "$states" | xargs)); cancelling"
  scancel "$id" 2>/dev/null
  return 1
}
json_field() { /usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]))' "$1" "$2" 2>/dev/null; }
show_output() { say "--- $1 (last lines)"; tail -n "${2:-15}" "$1" 2>/dev/null | sed 's/^/    /'; }

sets="train.steps=20 eval.every=10 log.every=5 data.train_limit=2000 ${EXTRA_SETS:-}"

# --- 1. train.sbatch: 4 tasks on the CPUs, with srun (auto) and with the mpirun fallback ----
for launcher in auto mpirun; do
  id=$(sbatch --parsable --ntasks=4 --overcommit --time=10 --chdir="$root" --output="$tmp/train-%j.out" \
    --export=ALL,LOWSYNC="$trainer",LOWSYNC_ROOT="$root",LAUNCHER="$launcher",EXTRA_SETS="$sets" \
    "$root/jobs/slurm/train.sbatch" 2>"$tmp/sbatch.err")
  if [[ -z $id ]]; then
    say "sbatch failed: $(cat "$tmp/sbatch.err")"
    failed=$((failed + 1))
    continue
  fi
  say "train.sbatch (LAUNCHER=$launcher) submitted as job $id"
  states=$(wait_job "$id")
  say "job $id: $states"
  show_output "$tmp/train-$id.out" 6
  used=$(grep -o 'launch.sh: [a-z]*' "$tmp/train-$id.out" | head -1 | cut -d' ' -f2)
  say "train.sbatch (LAUNCHER=$launcher) launched with: ${used:-unknown}"
  check "train.sbatch ($launcher) completed" test "$(job_state "$id")" == COMPLETED
  check "train.sbatch ($launcher) wrote runs/$id/summary.json" test -f "$root/runs/$id/summary.json"
  check "train.sbatch ($launcher) summary.json has ranks == 4" \
    test "$(json_field "$root/runs/$id/summary.json" ranks)" == 4
  if [[ $trainer != "$stub" ]]; then
    # The real trainer learned (20 steps of the MLP reach ~50%; chance is 10%) and logged.
    check "train.sbatch ($launcher) test accuracy > 0.2" /usr/bin/python3 -c \
      'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["final_test_accuracy"] > 0.2 else 1)' \
      "$root/runs/$id/summary.json"
    check "train.sbatch ($launcher) metrics.csv has rows up to step 20" \
      grep -q '^20,' "$root/runs/$id/metrics.csv"
  fi
  if [[ $launcher == auto ]] && srun --mpi=list 2>&1 | grep -qw pmix; then
    check "train.sbatch (auto) launched with srun --mpi=pmix" test "$used" == srun
  fi
done

# --- 2. sweep.sbatch: a job array of 2 runs ---------------------------------------------------
if [[ -n $stub ]]; then
  cat >"$tmp/sweep.toml" <<EOF
strategies = ["allreduce", "periodic"]
ranks = [2]
[set]
"train.steps" = 20
EOF
  id=$(sbatch --parsable --array=0-1 --ntasks=2 --overcommit --time=10 --chdir="$root" \
    --output="$tmp/sweep-%A_%a.out" --export=ALL,LOWSYNC="$stub",LOWSYNC_ROOT="$root" \
    "$root/jobs/slurm/sweep.sbatch" "$tmp/sweep.toml" 2>"$tmp/sbatch.err")
  if [[ -z $id ]]; then
    say "sbatch failed: $(cat "$tmp/sbatch.err")"
    failed=$((failed + 1))
  else
    say "sweep.sbatch submitted as array job $id"
    states=$(wait_job "$id")
    say "array job $id: $states"
    show_output "$tmp/sweep-${id}_1.out" 6
    for t in 0 1; do
      check "sweep.sbatch task $t summary.json has ranks == 2" \
        test "$(json_field "$root/runs/$id/$t/summary.json" ranks)" == 2
    done
    check "sweep.sbatch wrote runs/$id/runs.tsv" test -s "$root/runs/$id/runs.tsv"
  fi

  # --- 3. long.sbatch: USR1 -> checkpoint + exit 3 -> requeue -> resume -----------------------
  # The stub waits up to 60 s for the signal; the real trainer gets enough steps to be running
  # when it comes (and the restart, resuming, finishes them).
  long_trainer=$stub
  long_sets=""
  if [[ $long_mode == real && $trainer != "$stub" ]]; then
    long_trainer=$trainer
    long_sets="train.steps=3000 eval.every=1000 log.every=100 data.train_limit=2000 ${EXTRA_SETS:-}"
  fi
  id=$(sbatch --parsable --ntasks=2 --overcommit --time=10 --chdir="$root" \
    --output="$tmp/long-%j.out" \
    --export=ALL,LOWSYNC="$long_trainer",LOWSYNC_ROOT="$root",STUB_WAIT_S=60,EXTRA_SETS="$long_sets" \
    "$root/jobs/slurm/long.sbatch" 2>"$tmp/sbatch.err")
  if [[ -z $id ]]; then
    say "sbatch failed: $(cat "$tmp/sbatch.err")"
    failed=$((failed + 1))
  else
    say "long.sbatch submitted as job $id"
    deadline=$((SECONDS + 60))
    until grep -q 'launch.sh:' "$tmp/long-$id.out" 2>/dev/null || ((SECONDS > deadline)); do sleep 0.5; done
    sleep 3  # let MPI start and the ranks reach their wait loop
    say "sending USR1 to the batch shell of job $id (as --signal=B:USR1 would)"
    scancel --batch --signal=USR1 "$id"
    # The first start ends in a requeue. Slurm holds a requeued job for the credential lifetime
    # (cred_expire, 120 s by default, 10 s in this test's slurm.conf): a job restarted sooner
    # finds its old credential revoked on the node and fails ("Job credential revoked").
    deadline=$((SECONDS + job_timeout))
    # (The real trainer also writes summary.json when it stops on the signal: wait for the
    # restart's, which has stopped_early false.)
    until [[ -f $root/runs/$id/summary.json && $(json_field "$root/runs/$id/summary.json" stopped_early) != True ]] ||
      ((SECONDS > deadline)); do
      [[ $(job_state "$id") == FAILED ]] && break
      sleep 1
    done
    wait_job "$id" >/dev/null
    if [[ $(job_state "$id") != COMPLETED ]]; then
      say "long job $id did not complete after its restart: $(scontrol show job "$id" 2>/dev/null | grep -oE '(JobState|Reason)=[^ ]*' | xargs)"
    fi
    show_output "$tmp/long-$id.out" 14
    check "long.sbatch forwarded USR1 and the ranks wrote a checkpoint" \
      test -n "$(ls -A "$root/runs/$id/checkpoints" 2>/dev/null)"
    check "long.sbatch requeued after exit 3" grep -q "requeueing job $id" "$tmp/long-$id.out"
    check "long.sbatch restart resumed from runs/$id" grep -q "resuming from runs/$id" "$tmp/long-$id.out"
    check "long.sbatch restart passed --resume runs/$id to the trainer" \
      grep -Eq "^runs/$id(/|$)" <<< "$(json_field "$root/runs/$id/summary.json" resumed_from)"
    if [[ $long_trainer != "$stub" ]]; then
      check "long.sbatch: the resumed trainer finished all 3000 steps" \
        test "$(json_field "$root/runs/$id/summary.json" steps)" == 3000
    fi
    check "long.sbatch completed after the restart" test "$(job_state "$id")" == COMPLETED
  fi
else
  say "no stub trainer (mpicc missing): sweep and long job tests skipped"
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
