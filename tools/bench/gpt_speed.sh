#!/usr/bin/env bash
# gpt speed, issue 23: lowsync's bench_gpt (fp32 and native bf16, one thread, batch 16 x 128) and
# the same model in PyTorch (tools/bench/gpt_pytorch.py, where python3-torch is installed), one
# after the other in one run, with the ratios. Build first: tools/build.sh -DLOWSYNC_BUILD_BENCHMARKS=ON.
#   tools/bench/gpt_speed.sh [OUT_JSON]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bench="${LOWSYNC_BUILD_DIR:-$root/build}/bin/bench_gpt"
[ -x "$bench" ] || { echo "gpt_speed: $bench not built (tools/build.sh -DLOWSYNC_BUILD_BENCHMARKS=ON)" >&2; exit 2; }
json="${1:-$(mktemp --suffix=.json)}"
"$bench" --benchmark_out="$json" --benchmark_out_format=json \
  --benchmark_format=console 2>&1 | grep -v "raised to"
rc=0
/usr/bin/python3 "$root/tools/bench/gpt_pytorch.py" --lowsync "$json" || rc=$?
[ "$rc" -eq 77 ] && echo "gpt_speed: no PyTorch here, lowsync's side only (apt-get install python3-torch for the ratio)"
[ "$rc" -eq 77 ] && exit 0
exit "$rc"
