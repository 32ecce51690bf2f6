#!/usr/bin/env bash
# Checks the alpha-beta network model on emulated links (issue 21): for every profile and rank
# count, tools/netem/netem.sh builds the link, bench_comm --calibration-only measures its alpha and
# beta (OUT/PROFILE-nK/calibration.json), every strategy trains STEPS steps over it, and
# tools/compare/calibration.py sets each run's measured communication seconds per step against the
# model's (OUT/PROFILE-nK/calibration.md). With TTT_STEPS > 0 it then trains every strategy to a
# target accuracy on TTT_PROFILE at 2 ranks and compares the measured time-to-target order with the
# model's (OUT/ttt/calibration.md). OUT/summary.md gathers the tables. Needs root (netem.sh).
# env: PROFILES ("100mbit 1gbit 10gbit"), RANKS_LIST ("2 4"), STRATEGIES ("allreduce periodic fda demo diloco powersgd";
#      also streaming, streaming_overlap),
#      STEPS (40), TTT_STEPS (0 = skip; e.g. 600), TTT_PROFILE (100mbit), TTT_TARGET (0.80),
#      TTT_EVAL_EVERY (25), EXTRA_SETS (key=value words for every run), OUT (runs/netem-<time>)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${LOWSYNC_BUILD_DIR:-$root/build}"
lowsync="$build/bin/lowsync"
bench="$build/bin/bench_comm"
netem="$root/tools/netem/netem.sh"
for b in "$lowsync" "$bench"; do
  [[ -x $b ]] || { echo "model_check.sh: $b is not built (tools/build.sh)" >&2; exit 1; }
done
out="${OUT:-$root/runs/netem-$(date +%Y%m%d-%H%M%S)}"
profiles=(${PROFILES-100mbit 1gbit 10gbit})  # PROFILES="" skips the matrix
ranks_list=(${RANKS_LIST:-2 4})
strategies=(${STRATEGIES:-allreduce periodic fda demo diloco powersgd})
steps="${STEPS:-40}"
extra=(${EXTRA_SETS:-})
export OMP_NUM_THREADS=1
mkdir -p "$out"

# The rows of tools/run.sh's built-in comparison (same settings), MLP on Fashion-MNIST.
declare -A rows=(
  [allreduce]="sync.strategy=allreduce optim.name=sgd optim.lr=0.05"
  [periodic]="sync.strategy=periodic sync.period=10 optim.name=sgd optim.lr=0.05"
  [fda]="sync.strategy=fda sync.fda.estimator=linear optim.name=sgd optim.lr=0.05"
  [demo]="sync.strategy=demo optim.lr=0.001 optim.demo.value=bf16"
  # H = 10 rather than DiLoCo's 50 so that a 40-step run syncs 4 times.
  [diloco]="sync.strategy=diloco sync.period=10 optim.name=adamw optim.lr=0.001"
  [powersgd]="sync.strategy=powersgd optim.name=sgd optim.lr=0.05"
  # Streaming DiLoCo (not in the default list): 4 fragments, one synced every 5 steps, blocking or
  # with each fragment's allreduce waited for 8 steps later (the model hides 8 steps of compute).
  [streaming]="sync.strategy=diloco sync.period=20 sync.diloco.fragments=4 optim.name=adamw optim.lr=0.001"
  [streaming_overlap]="sync.strategy=diloco sync.period=20 sync.diloco.fragments=4 sync.diloco.overlap=8 optim.name=adamw optim.lr=0.001"
)
for s in "${strategies[@]}"; do
  [[ -n ${rows[$s]:-} ]] || { echo "model_check.sh: unknown strategy '$s' (have: ${!rows[*]})" >&2; exit 2; }
done

# calibrate PROFILE K DIR: bench_comm over the link; the largest message takes ~1/3 s on it.
calibrate() {
  local profile=$1 k=$2 dir=$3 max=$((4 << 20))
  case $profile in 1gbit) max=$((16 << 20)) ;; 10gbit) max=$((64 << 20)) ;; esac
  "$netem" --ranks "$k" --profile "$profile" -- "$bench" --calibration-only --max-bytes "$max" \
    --seconds-per-size 2 --label "$profile (tc tbf), $k ranks" --json "$dir/calibration.json" >"$dir/calibration.log" 2>&1 \
    || { echo "model_check.sh: calibration failed, see $dir/calibration.log" >&2; tail -3 "$dir/calibration.log" >&2; exit 1; }
  grep '^fit:' "$dir/calibration.log" | sed "s/^/model_check.sh: $profile n=$k /"
  record_bucket "$dir"
}

# record_bucket DIR: the tbf bucket netem.sh set up (its "tbf burst N B" line in calibration.log)
# goes into calibration.json as shaper_bucket_bytes, which calibration.py credits to each call
# that follows compute.
record_bucket() {
  /usr/bin/python3 - "$1" <<'PY'
import json, re, sys
d = sys.argv[1]
m = re.search(r"tbf burst (\d+) B", open(f"{d}/calibration.log").read())
if m:
    c = json.load(open(f"{d}/calibration.json"))
    c["shaper_bucket_bytes"] = int(m.group(1))
    open(f"{d}/calibration.json", "w").write(json.dumps(c, indent=2) + "\n")
PY
}

# train PROFILE K DIR STRATEGY SETTINGS...: one run over the link.
train() {
  local profile=$1 k=$2 dir=$3 s=$4 sets=()
  shift 4
  # comm.separate_waits: a barrier before each strategy collective books the wait for the slowest
  # rank's compute apart (obs.wait), so the measured seconds are the transfer the model predicts.
  for kv in ${rows[$s]} model.arch=mlp log.progress=off comm.separate_waits=true "$@" "${extra[@]}"; do
    sets+=(--set "$kv")
  done
  local t0=$SECONDS
  if ! "$netem" --ranks "$k" --profile "$profile" -- "$lowsync" train "${sets[@]}" --force --out "$dir/$s" \
      >"$dir/$s.log" 2>&1; then
    echo "model_check.sh: $profile n=$k $s failed, see $dir/$s.log" >&2
    tail -3 "$dir/$s.log" >&2
    exit 1
  fi
  echo "model_check.sh: $profile n=$k $s done ($((SECONDS - t0)) s)"
}

summary="$out/summary.md"
echo "# Network model on emulated links ($(date -u +%Y-%m-%dT%H:%MZ), load average $(cut -d' ' -f1-3 /proc/loadavg))" >"$summary"
for profile in "${profiles[@]}"; do
  for k in "${ranks_list[@]}"; do
    dir="$out/$profile-n$k"
    mkdir -p "$dir"
    calibrate "$profile" "$k" "$dir"
    for s in "${strategies[@]}"; do
      train "$profile" "$k" "$dir" "$s" train.steps="$steps" eval.every=0 log.every="$steps"
    done
    /usr/bin/python3 "$root/tools/compare/calibration.py" "${strategies[@]/#/$dir/}" \
      --calibration "$dir/calibration.json" --json "$dir/calibration_rows.json" >"$dir/calibration.md"
    { echo; echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"; echo; sed '/^### Time to/,$d' "$dir/calibration.md"; } >>"$summary"
  done
done

if [[ ${TTT_STEPS:-0} -gt 0 ]]; then
  profile="${TTT_PROFILE:-100mbit}"
  dir="$out/ttt"
  mkdir -p "$dir"
  calibrate "$profile" 2 "$dir"
  for s in "${strategies[@]}"; do
    train "$profile" 2 "$dir" "$s" train.steps="$TTT_STEPS" eval.every="${TTT_EVAL_EVERY:-25}" log.every="${TTT_EVAL_EVERY:-25}"
  done
  /usr/bin/python3 "$root/tools/compare/calibration.py" "${strategies[@]/#/$dir/}" --calibration "$dir/calibration.json" \
    --target-acc "${TTT_TARGET:-0.80}" >"$dir/calibration.md"
  { echo; echo "## Time to target ($profile, 2 ranks, load average $(cut -d' ' -f1-3 /proc/loadavg))"; echo;
    sed -n '/^### Time to/,$p' "$dir/calibration.md"; } >>"$summary"
fi
echo "model_check.sh: tables in $summary"
