#!/usr/bin/env bash
# Golden runs (issue #17): short fixed-seed 2-rank runs, one per strategy, estimator, ZO form and
# precision, reduced to what must not change when code moves: every metrics.csv column except the
# timing ones (wall_s, compute_s, comm_s, samples_per_s) and a SHA-256 of every state dataset of
# the final checkpoint (model, optimizer, strategy, zo values, prune mask). A change that alters
# results on purpose regenerates the reference in a commit that says why:
#   tests/golden/golden.sh build/bin/lowsync --record
# The reference is bitwise for the CPU that recorded it (oneDNN picks kernels by ISA); on another
# CPU model the comparison is skipped with a message (exit 77), never silently passed.
set -euo pipefail
lowsync="${1:?usage: golden.sh path/to/lowsync [--record]}"
record="${2:-}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
reference="$here/reference.txt"
python=/usr/bin/python3
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
cpu="$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^model name[[:space:]]*:[[:space:]]*//') / $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -c '^avx512') avx512 flags"

# name | extra --set keys (the common ones below)
runs=(
  "none|sync.strategy=none"
  "allreduce|sync.strategy=allreduce"
  "periodic|sync.strategy=periodic sync.period=4"
  "fda_naive|sync.strategy=fda sync.fda.estimator=naive sync.fda.threshold_per_param=5e-8"
  "fda_linear|sync.strategy=fda sync.fda.estimator=linear sync.fda.threshold_per_param=5e-8"
  "fda_sketch|sync.strategy=fda sync.fda.estimator=sketch sync.fda.threshold_per_param=5e-8"
  "demo|sync.strategy=demo optim.lr=0.001"
  "zo_fedsgd|optim.name=zo optim.zo.q=4 prune.method=ntk prune.rounds=2 optim.lr=0.001"
  "zo_fedavg|optim.name=zo optim.zo.form=fedavg optim.zo.q=4 sync.period=4 prune.method=random optim.lr=0.001"
  "bf16_native|precision.compute=bf16 precision.storage=native"
  "fp16|precision.compute=fp16"
  "fp8_compute|precision.compute=fp8"
  "fp8_wire|sync.strategy=periodic sync.period=4 precision.wire=fp8_e4m3"
)
common="train.steps=12 train.batch=16 data.train_limit=2000 log.every=4 eval.every=6 eval.batch=500 checkpoint.every=12 log.progress=off"

digest() {  # run folder -> lines "name key value"
  "$python" - "$1" "$2" <<'PY'
import csv, glob, hashlib, sys
import h5py
name, run = sys.argv[1], sys.argv[2]
timing = {"wall_s", "compute_s", "comm_s", "samples_per_s"}
with open(f"{run}/metrics.csv") as f:
    for row in csv.DictReader(f):
        kept = ",".join(f"{k}={v}" for k, v in row.items() if k not in timing)
        print(f"{name} metrics {kept}")
ckpt = sorted(glob.glob(f"{run}/checkpoints/ckpt-*.h5"))[-1]
with h5py.File(ckpt, "r") as h:
    def visit(path, obj):
        if isinstance(obj, h5py.Dataset) and path.split("/")[0] in ("model", "optim", "strategy", "zo", "prune"):
            print(f"{name} sha256 {path} {hashlib.sha256(obj[()].tobytes()).hexdigest()}")
    h.visititems(visit)
PY
}

out="$work/digest.txt"
for entry in "${runs[@]}"; do
  name="${entry%%|*}"
  sets=()
  for kv in $common ${entry#*|}; do sets+=(--set "$kv"); done
  if ! mpirun -q --oversubscribe -n 2 "$lowsync" train "${sets[@]}" --out "$work/$name" >"$work/$name.log" 2>&1; then
    echo "golden: run $name failed:"; tail -5 "$work/$name.log"; exit 1
  fi
  digest "$name" "$work/$name" >>"$out"
done

if [ "$record" = "--record" ]; then
  { echo "# cpu: $cpu"; cat "$out"; } >"$reference"
  echo "golden: recorded $(wc -l <"$out") lines into $reference"
  exit 0
fi
recorded_cpu="$(sed -n 's/^# cpu: //p' "$reference")"
if [ "$recorded_cpu" != "$cpu" ]; then
  echo "golden: SKIPPED: reference recorded on '$recorded_cpu', this CPU is '$cpu' (oneDNN kernels differ by ISA)"
  exit 77
fi
if diff <(grep -v '^#' "$reference") "$out" >"$work/diff.txt"; then
  echo "golden: $(wc -l <"$out") lines bitwise equal to $reference (${#runs[@]} runs)"
else
  echo "golden: results differ from $reference:"; head -40 "$work/diff.txt"; exit 1
fi
