#!/usr/bin/env bash
# CNN speed, issue 19: lowsync's bench_step cnn rows (fp32 and native bf16, one thread, batch 64)
# and the same model in PyTorch (tools/bench/cnn_pytorch.py: fp32 and bf16 autocast, where Debian's
# python3-torch is installed), alternated REPS times in one script run, then the medians and the
# ratios lowsync / PyTorch (fp32 against fp32; bf16 against PyTorch fp32, the issue's baseline, and
# against PyTorch's own bf16 autocast). Targets: fp32 >= 1.5x PyTorch fp32 and >= 4,100 samples/s,
# bf16 >= 2.5x PyTorch. PyTorch runs twice per repeat: stock, and with glibc malloc told to keep
# freed memory (MALLOC_MMAP_THRESHOLD_ etc.): stock, glibc often (2 of 3 repeats measured) returns
# PyTorch's freed fp32 activations to the kernel and every step faults them in again (~3,000 minor
# faults, ~21 ms of system time per step), which is not the framework's compute.
# Build first: tools/build.sh -DLOWSYNC_BUILD_BENCHMARKS=ON.
#   [REPS=3] [SECONDS_PER_ROW=10] tools/bench/cnn_speed.sh [OUT_DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bench="${LOWSYNC_BUILD_DIR:-$root/build}/bin/bench_step"
py=/usr/bin/python3  # Debian's python3-torch; a pyenv python3 on PATH does not see it
[ -x "$bench" ] || { echo "cnn_speed: $bench not built (tools/build.sh -DLOWSYNC_BUILD_BENCHMARKS=ON)" >&2; exit 2; }
reps="${REPS:-3}"
secs="${SECONDS_PER_ROW:-10}"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
echo "cnn_speed: $reps repeat(s), results in $out; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
torch=1
for i in $(seq 1 "$reps"); do
  echo "== repeat $i/$reps (load average $(cut -d' ' -f1-3 /proc/loadavg)): lowsync bench_step (cnn, cnn_bf16)"
  "$bench" --benchmark_filter=cnn --benchmark_out="$out/lowsync_$i.json" --benchmark_out_format=json \
    --benchmark_format=console 2>&1 | grep -v "raised to"
  if [ "$torch" -eq 1 ]; then
    echo "== repeat $i/$reps: PyTorch, stock (fp32, bf16 autocast)"
    probe=--no-probe
    [ "$i" -eq 1 ] && probe=  # list PyTorch's oneDNN primitives once
    rc=0
    "$py" "$root/tools/bench/cnn_pytorch.py" --seconds "$secs" --out "$out/pytorch_stock_$i.json" $probe || rc=$?
    if [ "$rc" -eq 77 ]; then
      echo "cnn_speed: no PyTorch here, lowsync's side only (apt-get install python3-torch libopenblas0-pthread for the ratios)"
      torch=0
      continue
    fi
    [ "$rc" -eq 0 ] || exit "$rc"
    echo "== repeat $i/$reps: PyTorch, glibc malloc keeping freed memory (fp32, bf16 autocast)"
    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456 \
      "$py" "$root/tools/bench/cnn_pytorch.py" --seconds "$secs" --out "$out/pytorch_tuned_$i.json" --no-probe
  fi
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" "$root/tools/bench/cnn_pytorch.py" --summarize "$out"
