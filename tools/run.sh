#!/usr/bin/env bash
# The main job: set up, build, then the built-in strategy comparison (ALGORITHMS.md section 9) on a
# heterogeneous default: MLP on Fashion-MNIST split over 4 ranks by Dirichlet(0.1) labels. Floor
# `none` and ceiling `allreduce`, every strategy swept over its own knob, lr from one grid per
# optimizer, the best setting with 3 seeds (tools/compare/mainjob.py runs a staged subset of the grids
# in jobs/sweeps/compare{,_adamw,_wire}.toml); then `lowsync compare` writes the report (target =
# 90% of the none-to-allreduce gap, bytes and time to target measured and modeled, frontier) and
# the group tables go to stdout. Strategies the build does not know (diloco, powersgd before their
# branches merge) are skipped with a note. Before the runs it calibrates the network model on this
# machine (bench_comm --quick on 2 ranks -> OUT/calibration.json) for the "measured here" link.
# ~15 min on 2 shared cores (README "The main job": 400 steps, batch 32, eval every 50).
# env: WORKLOAD (mlp | gpt: jobs/sweeps/compare_gpt.toml, once the gpt workload exists),
# OUT (runs/compare-<timestamp>; rerun with the same OUT to resume: finished runs are skipped),
# STRATEGIES (space-separated: only these), EXTRA_SETS (key=value words added to every run),
# CALIBRATE (1; 0 skips the calibration).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
start_s=$SECONDS
"$root/tools/setup.sh"
"$root/tools/build.sh" >/dev/null
lowsync="$root/build/bin/lowsync"
out="${OUT:-$root/runs/compare-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
export OMP_NUM_THREADS=1
# shellcheck source=jobs/lib/common.sh
source "$root/jobs/lib/common.sh"
extra_sets=()
lowsync_split_words extra_sets EXTRA_SETS "${EXTRA_SETS:-}" || exit 2

case "${WORKLOAD:-mlp}" in
  mlp) sweeps=(compare compare_adamw compare_wire) ;;
  gpt) sweeps=(compare_gpt) ;;
  *) echo "run.sh: WORKLOAD must be mlp or gpt, got '${WORKLOAD}'" >&2; exit 2 ;;
esac

compare_opts=()
if [[ ${CALIBRATE:-1} == 1 ]]; then
  echo "run.sh: calibrating the network model (bench_comm on 2 ranks) -> $out/calibration.json"
  if "$root/jobs/lib/launch.sh" 2 "$root/build/bin/bench_comm" --quick --calibration-only --json "$out/calibration.json" \
      >"$out/calibration.log" 2>&1; then
    grep '^fit:' "$out/calibration.log" | sed 's/^/run.sh: /' || true
    compare_opts+=(--calibration "$out/calibration.json")
  else
    echo "run.sh: calibration failed (see $out/calibration.log); the report has no measured link" >&2
  fi
fi

plan=(/usr/bin/python3 "$root/tools/compare/mainjob.py" --out-root "$out" --lowsync "$lowsync"
      --only "${STRATEGIES:-}")
for kv in "${extra_sets[@]}"; do plan+=(--set "$kv"); done
for s in "${sweeps[@]}"; do plan+=("$root/jobs/sweeps/$s.toml"); done
echo "run.sh: runs -> $out (one line per run; logs beside each run folder)"
plan_rc=0
"${plan[@]}" | sed 's/^mainjob: /run.sh: /' || plan_rc=$?

dirs=()
for s in "${sweeps[@]}"; do [[ -d "$out/$s" ]] && dirs+=("$out/$s"); done
if ((${#dirs[@]} == 0)); then
  echo "run.sh: no runs were made" >&2
  exit 1
fi
if "$lowsync" compare "${dirs[@]}" --out "$out/report" "${compare_opts[@]}" >/dev/null; then
  # The per-optimizer tables on stdout: the report's sections from the first group to the figures.
  echo
  awk '/^## Optimizer/{on=1} /^## (Figures|Pareto)/{on=0} on' "$out/report/report.md"
  echo "run.sh: report: $out/report/report.md (plots beside it); $(( (SECONDS - start_s) / 60 )) min $(( (SECONDS - start_s) % 60 )) s in all"
else
  echo "run.sh: the report could not be written (see above)" >&2
  exit 1
fi
if ((plan_rc != 0)); then
  echo "run.sh: some runs failed (see the lines above); the report leaves them out" >&2
  exit 1
fi
