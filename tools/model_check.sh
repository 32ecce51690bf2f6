#!/usr/bin/env bash
# Checks the alpha-beta network model against measurements on this machine:
#  1. calibrates alpha and beta with bench_comm on 2 ranks (ping-pong) -> OUT/calibration.json;
#  2. measures MPI_Allreduce at every rank count of RANKS_LIST (bench_comm, 4 B .. 4 MiB) and
#     prints modeled vs measured time per size (OUT/collectives.md);
#  3. runs tools/run.sh's comparison at each rank count (STEPS steps) and writes one
#     `lowsync compare` report over all of them (OUT/report/report.md), whose "Model check"
#     section sets the modeled communication time of every run against the measured one.
# Oversubscribed runs (ranks > cores) wait for descheduled ranks inside collectives; the model
# has no such term, so its error there measures the machine's load, not the network.
# env: RANKS_LIST ("2 4 8"), STEPS (300), STRATEGIES (allreduce periodic fda demo), OUT (runs/model-check-<time>)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/runs/model-check-$(date +%Y%m%d-%H%M%S)}"
ranks_list=(${RANKS_LIST:-2 4 8})
steps="${STEPS:-300}"
export OMP_NUM_THREADS=1
mkdir -p "$out"
bench="$root/build/bin/bench_comm"
[[ -x $bench ]] || { echo "model_check.sh: $bench not built (tools/build.sh)" >&2; exit 1; }

echo "model_check.sh: calibrating on 2 ranks -> $out/calibration.json"
"$root/jobs/lib/launch.sh" 2 "$bench" --quick --calibration-only --json "$out/calibration.json" >"$out/calibration.log" 2>&1
grep '^fit:' "$out/calibration.log"
for n in "${ranks_list[@]}"; do
  echo "model_check.sh: MPI_Allreduce at $n ranks"
  "$root/jobs/lib/launch.sh" "$n" "$bench" --quick --calibration-only --json "$out/bench-n$n.json" >"$out/bench-n$n.log" 2>&1
done
/usr/bin/python3 - "$out" "${ranks_list[@]}" <<'PY' | tee "$out/collectives.md"
import json, sys
out, ns = sys.argv[1], [int(n) for n in sys.argv[2:]]
cal = json.load(open(f"{out}/calibration.json"))
a, b = cal["alpha_s"], cal["beta_Bps"]
print(f"Ring allreduce, modeled 2(N-1)a + 2(N-1)/N S/b with a = {a*1e6:.2f} us, b = {b/1e9:.2f} GB/s "
      "(ping-pong on 2 ranks) vs measured MPI_Allreduce (bench_comm --quick):\n")
print("| Ranks | Bytes | Measured | Modeled | Error |\n|---:|---:|---:|---:|---:|")
errs = {}
for n in ns:
    for p in json.load(open(f"{out}/bench-n{n}.json"))["points"]:
        s, t = p["bytes"], p["allreduce_s"]
        m = 2 * (n - 1) * a + 2 * (n - 1) / n * s / b
        errs.setdefault(n, []).append(abs(m - t) / t)
        if s >= 1024:
            print(f"| {n} | {s:,.0f} | {t*1e6:,.1f} us | {m*1e6:,.1f} us | {(m-t)/t:+.0%} |")
print("\nMean absolute error over all sizes: " +
      ", ".join(f"{n} ranks {sum(e)/len(e):.0%}" for n, e in errs.items()))
PY

export STRATEGIES="${STRATEGIES:-allreduce periodic fda demo}"
runs=()
for n in "${ranks_list[@]}"; do
  echo "model_check.sh: the comparison at $n ranks, $steps steps"
  RANKS=$n STEPS=$steps CALIBRATE=0 OUT="$out/n$n" "$root/tools/run.sh" | grep -v '^run.sh: report' || true
  for s in $STRATEGIES; do runs+=("$out/n$n/$s"); done
done
"$root/build/bin/lowsync" compare "${runs[@]}" --out "$out/report" --calibration "$out/calibration.json"
sed -n '/^## Model check/,/^## Runs/p' "$out/report/report.md" | head -n -1
echo "model_check.sh: report: $out/report/report.md"
