#!/usr/bin/env bash
# Crafted checkpoints (h5py edits of a real 2-rank checkpoint, with the data checksums made to
# match, so only lowsync's own validation can catch them) are refused by resume, eval and inspect
# with one line naming the file and the problem: a negative step, a model/layout out of range or
# not the model's, an arch attribute that disagrees with config_toml, an altered config_toml
# (config_toml_crc32), attributes that contradict the dataset shapes, NaN parameters. A file
# without config_toml_crc32 (written before it existed) still loads.
set -uo pipefail
lowsync="$1"
tmp=$(mktemp -d)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
check() { if eval "$2"; then passed=$((passed+1)); else failed=$((failed+1)); echo "FAILED: $1"; fi; }
export OMP_NUM_THREADS=1
mpi=(mpirun -q --oversubscribe --bind-to none)
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
small=(--set model.arch=mlp --set data.train_limit=600 --set train.batch=8 --set log.progress=off
       --set eval.every=0 --set log.every=2 --set checkpoint.every=2 --set eval.batch=500)

"${mpi[@]}" -n 2 "$lowsync" train "${small[@]}" --set train.steps=2 --out "$tmp/run" >"$tmp/run.log" 2>&1
good="$tmp/run/checkpoints/ckpt-00000002.h5"
check "a real 2-rank checkpoint" '[ -f "$good" ]'
"$lowsync" inspect "$good" >"$tmp/good.log" 2>&1
check "inspect of the real checkpoint: rc 0, consistent" '[ $? -eq 0 ] && grep -q "consistent; parameters finite" "$tmp/good.log"'
check "the checkpoint carries config_toml_crc32" \
  '/usr/bin/python3 -c "import h5py,sys,zlib; f=h5py.File(sys.argv[1]); sys.exit(0 if f.attrs[\"config_toml_crc32\"]==zlib.crc32(f.attrs[\"config_toml\"]) else 1)" "$good"'

# craft NAME PYTHON: copies the good checkpoint to $tmp/NAME.h5 and runs PYTHON on it (f = the
# open file; fix(ds) rewrites a dataset's crc32 attribute to match its data).
craft() {
  cp "$good" "$tmp/$1.h5"
  /usr/bin/python3 - "$tmp/$1.h5" "$2" <<'PY'
import sys, zlib, h5py, numpy as np
f = h5py.File(sys.argv[1], "r+")
def fix(name):
    d = f[name]; a = d[()]
    if d.attrs["kind"] in (b"per_rank", "per_rank"):
        d.attrs["crc32"] = np.array([zlib.crc32(np.ascontiguousarray(r).tobytes()) for r in a], dtype="<u4")
    else:
        d.attrs["crc32"] = np.uint32(zlib.crc32(np.ascontiguousarray(a).tobytes()))
exec(sys.argv[2])
f.close()
PY
}
# expect NAME PATTERN: resume (2 ranks), eval and inspect each exit 2 with one error line that
# names the file and matches PATTERN.
expect() {
  local name=$1 pattern=$2 file="$tmp/$1.h5"
  timeout 60 "${mpi[@]}" -n 2 "$lowsync" train --resume "$file" --out "$tmp/r-$name" >"$tmp/$name.resume" 2>&1
  local rc=$?
  check "$name: resume exits 2 (got $rc)" '[ $rc -eq 2 ]'
  check "$name: resume says one line: $pattern" \
    '[ "$(grep -c error "$tmp/$name.resume")" -eq 1 ] && grep -q "$file: .*$pattern" "$tmp/$name.resume"'
  "$lowsync" eval --checkpoint "$file" >"$tmp/$name.eval" 2>&1
  rc=$?
  check "$name: eval exits 2 (got $rc)" '[ $rc -eq 2 ] && grep -q "$file: .*$pattern" "$tmp/$name.eval"'
  "$lowsync" inspect "$file" >"$tmp/$name.inspect" 2>&1
  rc=$?
  check "$name: inspect exits 2 (got $rc), not \"all OK\"" \
    '[ $rc -eq 2 ] && grep -q "$file: .*$pattern" "$tmp/$name.inspect" && ! grep -q "consistent" "$tmp/$name.inspect"'
}

craft negstep 'f.attrs["step"] = np.int64(-5)'
expect negstep "step -5 (must be >= 0)"
craft layout 'l = f["model/layout"][()]; l[1, 0] = 10**12; f["model/layout"][...] = l; fix("model/layout")'
expect layout "model/layout row 1 is (offset 1000000000000"
craft layoutsum 'l = f["model/layout"][()]; l[-1, 1] -= 7; f["model/layout"][...] = l; fix("model/layout")'
expect layoutsum "model/layout covers 535811 values, num_params is 535818"
craft arch 'f.attrs["arch"] = np.bytes_(b"cnn")'
expect arch 'attribute arch is "cnn" but its config_toml says model.arch = "mlp"'
craft strategy 'f.attrs["strategy"] = np.bytes_(b"fda")'
expect strategy 'attribute strategy is "fda" but its config_toml says "allreduce"'
craft config 'import re; t = f.attrs["config_toml"]; t = t.decode() if isinstance(t, bytes) else t; t2 = re.sub(r"(?m)^lr = .*$", "lr = 9.0", t, count=1); assert t2 != t; f.attrs["config_toml"] = np.bytes_(t2.encode())'
expect config "config_toml does not match its checksum"
craft numparams 'f.attrs["num_params"] = np.int64(1000)'
expect numparams "values per rank, expected 1000"
craft world 'f.attrs["world_size"] = np.int64(3)'
expect world "world_size is 3 (one row per rank)"
craft nan 'p = f["model/params"][()]; p[1, 17] = np.nan; f["model/params"][...] = p; fix("model/params")'
expect nan "model/params .*\\(nan\\|NaN\\)"

# A layout that is consistent in itself but not this model's: resume refuses it (inspect cannot know).
craft shifted 'l = f["model/layout"][()]; l[0, 1] += 1; l[1, 0] += 1; l[1, 1] -= 1; f["model/layout"][...] = l; fix("model/layout")'
timeout 60 "${mpi[@]}" -n 2 "$lowsync" train --resume "$tmp/shifted.h5" --out "$tmp/r-shifted" >"$tmp/shifted.log" 2>&1
check "layout not the model's: resume refused naming the tensor" \
  '[ $? -eq 2 ] && grep -q "model/layout row 0 is (offset 0, count 401409), but fc1.weight of model.arch mlp is (offset 0, count 401408)" "$tmp/shifted.log"'

# Older files without config_toml_crc32 still load.
craft old 'del f.attrs["config_toml_crc32"]'
"$lowsync" inspect "$tmp/old.h5" >"$tmp/old.inspect" 2>&1
check "no config_toml_crc32: inspect rc 0" '[ $? -eq 0 ]'
"$lowsync" train --resume "$tmp/old.h5" --set train.steps=3 --out "$tmp/r-old" >"$tmp/old.resume" 2>&1
check "no config_toml_crc32: resumes" '[ $? -eq 0 ]'

echo "checkpoint_trust: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
