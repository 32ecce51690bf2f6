#!/usr/bin/env bash
# The network model on an emulated 100 Mbit/s link (tools/netem/netem.sh, issue 21): bench_comm
# calibrates alpha and beta over the link, allreduce and periodic train 30 steps over it with 2
# ranks (one per network namespace), and tools/compare/calibration.py checks that the modeled
# communication seconds per step are within TOLERANCE of the measured ones (README: emulated links).
# Skipped (77) where network namespaces cannot be created (not root, no veth/bridge/tbf).
set -uo pipefail
lowsync="$1"
bench="$(dirname "$lowsync")/bench_comm"
src="${LOWSYNC_SOURCE_DIR:?set by ctest}"
netem="$src/tools/netem/netem.sh"
# Measured on the loaded 2-core machine (README, emulated links), error of the model: allreduce
# +3% .. +12%, periodic +14% .. +30% (5 runs); CPU contention moves the measured side by ~10%, and a
# CI machine measured +34% / +44% (its allreduce-fitted beta came out slower than the training
# traffic ran), and one full `tools/test.sh` on the 2-core machine +61% / +45% (the fit's beta
# slower than usual; rerun right after, it passed twice). A timing target does not belong in a test
# (tools/netem/model_check.sh measures it); this bound is loose enough for a loaded machine and
# still fails a model that is twice too high (+100%: bytes counted twice, the wrong ring formula,
# the ping-pong beta for a collective).
tolerance=0.8
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

code=0
"$netem" --check --ranks 2 --profile 100mbit >"$tmp/check.log" 2>&1 || code=$?
if [[ $code -eq 77 ]]; then
  echo "SKIPPED: cannot create network namespaces here: $(tail -1 "$tmp/check.log")"
  exit 77
elif [[ $code -ne 0 ]]; then
  echo "FAILED: netem.sh --check exited $code"; cat "$tmp/check.log"; exit 1
fi

failed=0
fail() { echo "FAILED: $*"; failed=1; }
export OMP_NUM_THREADS=1
t0=$SECONDS
"$netem" --ranks 2 --profile 100mbit -- "$bench" --calibration-only --max-bytes $((4 << 20)) --seconds-per-size 1 \
  --label "100mbit (ctest)" --json "$tmp/calibration.json" >"$tmp/calibration.log" 2>&1 \
  || { fail "bench_comm over the link"; tail -5 "$tmp/calibration.log"; exit 1; }
grep '^fit:' "$tmp/calibration.log"
# The fitted bandwidth is the link's: tbf at 100 Mbit/s = 12.5 MB/s, less TCP/IP headers (~5%).
beta=$(/usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['beta_Bps'])" "$tmp/calibration.json")
/usr/bin/python3 -c "import sys; b=float(sys.argv[1]); sys.exit(0 if 10.5e6 <= b <= 13e6 else 1)" "$beta" \
  || fail "calibrated beta $beta B/s is not the 100 Mbit/s link's (10.5-13 MB/s)"

# The runs carry the calibrated link, so their summary.json "modeled_comm_s" (src/comm/netmodel.cpp)
# is an independent check of calibration.py's model (tools/compare/netmodel.py formulas).
link=$(/usr/bin/python3 -c "import json,sys; c=json.load(open(sys.argv[1])); print(c['alpha_s']*1e6, (c.get('allreduce_beta_Bps') or c['beta_Bps'])*8/1e9)" \
  "$tmp/calibration.json")
common=(--set net.alpha_us="${link% *}" --set net.beta_gbps="${link#* }" --set model.arch=mlp --set optim.name=sgd --set optim.lr=0.05 --set train.batch=32
        --set data.train_limit=3000 --set train.steps=30 --set eval.every=0 --set log.every=30
        --set log.progress=off --set comm.separate_waits=true)
for s in allreduce periodic; do
  sets=(--set sync.strategy=$s)
  [[ $s == periodic ]] && sets+=(--set sync.period=5)
  "$netem" --ranks 2 --profile 100mbit -- "$lowsync" train "${common[@]}" "${sets[@]}" --out "$tmp/$s" \
    >"$tmp/$s.log" 2>&1 || { fail "$s over the link"; tail -5 "$tmp/$s.log"; }
done
[[ $failed -eq 0 ]] || exit 1

/usr/bin/python3 "$src/tools/compare/calibration.py" "$tmp/allreduce" "$tmp/periodic" \
  --calibration "$tmp/calibration.json" --max-error "$tolerance" --json "$tmp/rows.json" | sed -n '/^| Run/,/^$/p'
[[ ${PIPESTATUS[0]} -eq 0 ]] || fail "modeled communication per step beyond $tolerance of the measured"
# Both rows must be checked, not waved through as latency-bound.
/usr/bin/python3 - "$tmp/rows.json" <<'PY' || fail "a run is not bandwidth-bound on the 100 Mbit/s link"
import json, sys
rows = json.load(open(sys.argv[1]))
sys.exit(0 if len(rows) == 2 and all(r["bandwidth_bound"] for r in rows) else 1)
PY
/usr/bin/python3 - "$tmp" <<'PY' || fail "calibration.py's model differs from the trainer's modeled_comm_s"
import json, sys
for r in json.load(open(f"{sys.argv[1]}/rows.json")):
    cpp = json.load(open(f"{r['run']}/summary.json"))["modeled_comm_s"]
    py = r["modeled_s_per_step_one_beta"] * r["steps"]
    print(f"{r['strategy']}: modeled comm {py:.6f} s (calibration.py) vs {cpp:.6f} s (trainer)")
    if abs(py - cpp) > 1e-6 * max(cpp, 1e-9):
        sys.exit(1)
PY
# The measured side is each collective's slowest rank (a broadcast's root returns early).
/usr/bin/python3 - "$tmp" <<'PY' || fail "summary.json ledger entries lack seconds_max_rank >= rank 0's seconds"
import json, sys
for s in ("allreduce", "periodic"):
    for e in json.load(open(f"{sys.argv[1]}/{s}/summary.json"))["ledger"]:
        if not e.get("seconds_max_rank", -1.0) >= e["seconds"]:
            sys.exit(1)
PY
# lowsync compare --calibration carries the same section.
"$lowsync" compare "$tmp/allreduce" "$tmp/periodic" --out "$tmp/report" --calibration "$tmp/calibration.json" \
  --no-plots >/dev/null 2>&1 || fail "lowsync compare --calibration"
grep -q '^## Calibration: communication per step' "$tmp/report/report.md" 2>/dev/null \
  || fail "report.md has no calibration section"
echo "netem: $((SECONDS - t0)) s"
[[ $failed -eq 0 ]] && echo "PASSED: model within $tolerance of the measured comm per step on 100 Mbit/s"
exit $failed
