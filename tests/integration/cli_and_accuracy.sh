#!/usr/bin/env bash
# End-to-end: the CLI contract (--help, --version, errors naming the key, output files) and the
# MLP reaching a meaningful accuracy on Fashion-MNIST. The full 2,000-step numbers for MLP and CNN
# are in the README (tools/bench/accuracy.sh); this keeps CI short.
set -uo pipefail
lowsync="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
check() {  # check NAME COMMAND...: passes when the command succeeds
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $name"; fi
}
export OMP_NUM_THREADS=1

check "--version" bash -c "'$lowsync' --version | grep -q '^lowsync [0-9]'"
check "--help lists train" bash -c "'$lowsync' --help | grep -q train"
check "config lists keys" bash -c "'$lowsync' config | grep -q 'optim.lr'"

# Usage errors exit 1 as documented (CLI11's own codes were 106, 109 and 114) and an unknown
# command is named with the valid ones (it used to say "A subcommand is required").
"$lowsync" frobnicate >"$tmp/cmd.out" 2>&1
check "unknown command exits 1" test $? -eq 1
check "unknown command is named" grep -q "unknown command 'frobnicate' (commands: train, inspect, eval, compare, config" "$tmp/cmd.out"
"$lowsync" train --bogus >/dev/null 2>&1
check "unknown flag exits 1" test $? -eq 1
"$lowsync" inspect >/dev/null 2>&1
check "missing argument exits 1" test $? -eq 1
"$lowsync" >/dev/null 2>&1
check "no command exits 1" test $? -eq 1
"$lowsync" train --set train.steps=0 --out "$tmp/zero" >"$tmp/zero.out" 2>&1
check "train.steps = 0 refused" bash -c "test $? -eq 2 && grep -q \"'train.steps' = 0 is out of range\" '$tmp/zero.out'"

"$lowsync" train --set optim.lrr=0.1 --out "$tmp/bad" >"$tmp/bad.out" 2>&1
code=$?
check "bad key exits non-zero" test "$code" -ne 0
check "bad key is named" grep -q "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)" "$tmp/bad.out"
check "bad key error is one line" test "$(grep -c 'error' "$tmp/bad.out")" -eq 1

# Under the launcher a config error every rank sees is one line in all: rank 0 says it, every rank
# exits 2 cleanly (no MPI_Abort banner; launch.sh runs mpirun -q). It used to add 6-10 lines.
root="${LOWSYNC_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
LAUNCHER=mpirun bash "$root/jobs/lib/launch.sh" 2 "$lowsync" train --set optim.lrr=0.1 --out "$tmp/bad2" >"$tmp/bad2.out" 2>&1
code=$?
check "2-rank bad key exits 2" test "$code" -eq 2
check "2-rank bad key is one line" bash -c "grep -v '^launch.sh:' '$tmp/bad2.out' | wc -l | grep -qx 1"

"$lowsync" train --set data.dir=/nonexistent --out "$tmp/nodata" >"$tmp/nodata.out" 2>&1
check "missing data exits non-zero" test $? -ne 0
check "missing data names the file" grep -q "/nonexistent/train-images-idx3-ubyte.gz' does not exist" "$tmp/nodata.out"

printf '[optim]\nlr = "fast"\n' >"$tmp/bad.toml"
"$lowsync" train --config "$tmp/bad.toml" >"$tmp/toml.out" 2>&1
check "bad TOML value exits non-zero" test $? -ne 0
check "bad TOML value names file and key" grep -q "bad.toml: config key 'optim.lr' must be a number" "$tmp/toml.out"


# The full MLP workload (2,000 steps, SGD lr 0.05, batch 64; ~10 s): final accuracy >= 0.82 here;
# the README lists the measured numbers over seeds.
"$lowsync" train --set train.steps=2000 --set eval.every=500 --set log.every=100 --out "$tmp/mlp" >"$tmp/mlp.out" 2>&1
check "mlp run succeeds" test $? -eq 0
check "metrics.csv has a header and rows" bash -c "head -1 '$tmp/mlp/metrics.csv' | grep -q '^step,epoch,wall_s' && test \$(wc -l <'$tmp/mlp/metrics.csv') -eq 21"
check "config.toml reloads" "$lowsync" train --config "$tmp/mlp/config.toml" --set train.steps=1 --out "$tmp/reload"
acc=$(/usr/bin/python3 -c "import json;print(json.load(open('$tmp/mlp/summary.json'))['final_test_accuracy'])")
echo "mlp 2000 steps: test accuracy $acc"
check "mlp accuracy >= 0.82" /usr/bin/python3 -c "import sys; sys.exit(0 if $acc >= 0.82 else 1)"
check "summary has the contract keys" /usr/bin/python3 - "$tmp/mlp/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
keys = ["arch", "ranks", "steps", "final_test_accuracy", "final_loss", "samples_per_s", "wall_s", "compute_s",
        "comm_s", "bytes_sent_per_rank", "peak_rss_bytes", "train_state_bytes", "lowsync_version"]
missing = [k for k in keys if k not in s]
assert not missing, missing
assert s["train_state_bytes"] > 2 * 4 * 535818, s["train_state_bytes"]  # params + grads at least
assert s["peak_rss_bytes"] > s["train_state_bytes"]
PY

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
