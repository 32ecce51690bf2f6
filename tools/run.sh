#!/usr/bin/env bash
# The main job: set up, build, then the built-in strategy comparison on Fashion-MNIST (MLP,
# 4 ranks oversubscribed on this machine), one run per strategy, a table on stdout and the
# `lowsync compare` report (report.md + PNG plots). Before the runs it calibrates the network model
# on this machine (build/bin/bench_comm --quick on 2 ranks -> OUT/calibration.json), which the
# report uses for its "measured here" link and its model check.
# env: RANKS (4), STEPS (2000), EVAL_EVERY (250; 0 = only at the end), LOG_EVERY (50),
# STRATEGIES (space-separated names of the rows below), OUT (runs/compare-<timestamp>),
# EXTRA_SETS (key=value words added to every run), CALIBRATE (1; 0 skips the calibration).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/tools/setup.sh"
"$root/tools/build.sh" >/dev/null
lowsync="$root/build/bin/lowsync"
ranks="${RANKS:-4}"
steps="${STEPS:-2000}"
out="${OUT:-$root/runs/compare-$(date +%Y%m%d-%H%M%S)}"
eval_every="${EVAL_EVERY:-250}"
log_every="${LOG_EVERY:-50}"
mkdir -p "$out"
export OMP_NUM_THREADS=1
# EXTRA_SETS: key=value words, shell-quoted when a value has spaces (never expanded).
# shellcheck source=jobs/lib/common.sh
source "$root/jobs/lib/common.sh"
extra_sets=()
lowsync_split_words extra_sets EXTRA_SETS "${EXTRA_SETS:-}" || exit 2

compare_opts=()
if [[ ${CALIBRATE:-1} == 1 ]]; then
  echo "run.sh: calibrating the network model (bench_comm on 2 ranks) -> $out/calibration.json"
  if "$root/jobs/lib/launch.sh" 2 "$root/build/bin/bench_comm" --quick --calibration-only --json "$out/calibration.json" \
      >"$out/calibration.log" 2>&1; then
    grep '^fit:' "$out/calibration.log" | sed 's/^/run.sh: /'
    compare_opts+=(--calibration "$out/calibration.json")
  else
    echo "run.sh: calibration failed (see $out/calibration.log); the report has no measured link" >&2
  fi
fi

# name -> settings. Every row trains the same MLP for the same number of steps. periodic-fp8:
# periodic averaging over an fp8 wire with the fp32 server model; demo: bf16 values on the wire;
# diloco: H = 50 inner AdamW steps, outer Nesterov (0.7, 0.9); diloco-streaming: 4 fragments,
# each round merged 2 inner steps after its non-blocking allreduce started;
# zo-ntk: backprop-free FedSGD zeroth-order training after NTK pruning to 10% of the weights.
declare -A rows=(
  [allreduce]="sync.strategy=allreduce optim.name=sgd optim.lr=0.05"
  [periodic]="sync.strategy=periodic sync.period=10 optim.name=sgd optim.lr=0.05"
  [fda]="sync.strategy=fda sync.fda.estimator=linear optim.name=sgd optim.lr=0.05"
  [periodic-fp8]="sync.strategy=periodic sync.period=10 optim.name=sgd optim.lr=0.05 precision.wire=fp8_e4m3"
  [demo]="sync.strategy=demo optim.lr=0.001 optim.demo.value=bf16"
  [diloco]="sync.strategy=diloco sync.period=50 optim.name=adamw optim.lr=0.001"
  [diloco-streaming]="sync.strategy=diloco sync.period=50 sync.diloco.fragments=4 sync.diloco.overlap=2 optim.name=adamw optim.lr=0.001"
  [zo-ntk]="optim.name=zo optim.zo.form=fedsgd optim.zo.q=16 optim.zo.update=adam optim.lr=0.01 prune.method=ntk prune.sparsity=0.9"
)
order=(allreduce periodic periodic-fp8 fda demo diloco diloco-streaming zo-ntk)
strategies=(${STRATEGIES:-${order[*]}})

for name in "${strategies[@]}"; do
  [[ -n "${rows[$name]:-}" ]] || { echo "run.sh: unknown row '$name' (have: ${order[*]})" >&2; exit 2; }
  sets=()
  for kv in ${rows[$name]} model.arch=mlp train.steps="$steps" eval.every="$eval_every" log.every="$log_every" log.progress=lines "${extra_sets[@]}"; do
    sets+=(--set "$kv")
  done
  cmd=("$root/jobs/lib/launch.sh" "$ranks" "$lowsync" train "${sets[@]}" --force --out "$out/$name")
  echo "run.sh: $name on $ranks ranks -> $out/$name"
  if ! "${cmd[@]}" 2>"$out/$name.log"; then
    # The row's command, shell-quoted, so it can be copied and run again alone.
    { echo "run.sh: $name failed; see $out/$name.log; the command was:"
      printf ' '; printf ' %q' "${cmd[@]}"; printf '\n'
      tail -5 "$out/$name.log"; } >&2
    exit 1
  fi
done

/usr/bin/python3 - "$out" "${strategies[@]}" <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
print(f"\n{'strategy':<12} {'test acc':>9} {'wall s':>8} {'MB sent/rank':>13} {'samples/s':>10}")
for n in names:
    s = json.load(open(f"{out}/{n}/summary.json"))
    print(f"{n:<12} {s['final_test_accuracy']:>9.4f} {s['wall_s']:>8.1f} {s['bytes_sent_per_rank']/1e6:>13.2f} {s['samples_per_s']:>10.0f}")
PY
if "$lowsync" compare "${strategies[@]/#/$out/}" --out "$out/report" "${compare_opts[@]}" >/dev/null; then
  echo "run.sh: report: $out/report/report.md"
else
  echo "run.sh: the report could not be written (see above)" >&2
fi
