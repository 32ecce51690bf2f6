#!/usr/bin/python3
"""lowsync's model.arch = cnn (src/model/arch_cnn.cpp) in PyTorch, timed like build/bin/bench_step:
one SGD training step (forward, cross-entropy, backward, SGD lr 0.05 without momentum) at batch 64
on one thread, fp32 and bf16 (torch.autocast on the CPU), on random Fashion-MNIST-shaped input
[64, 1, 28, 28] with random labels (bench_step reads the real images through its loader; the data
does not change the arithmetic). Prints samples/s per precision (wall clock, and by this process's
CPU time like bench_step's cpu_samples_per_s), minor page faults and system time per step, and the
BLAS / oneDNN PyTorch runs on. With MALLOC_MMAP_THRESHOLD_ etc. set (MALLOC_TUNED below) it labels
its rows "malloc-tuned" instead of "stock".

Debian ships PyTorch 1.13 as python3-torch (not installed by tools/setup.sh: ~1 GB; install
libopenblas0-pthread with it, or its fp32 GEMMs run on the reference BLAS); without it this script
says so and exits 77. Run it with /usr/bin/python3 (a pyenv python3 does not see Debian's packages).

  tools/bench/cnn_speed.sh                       # both sides, alternated, medians and ratios
  tools/bench/cnn_pytorch.py [--seconds 10] [--out FILE.json]
  tools/bench/cnn_pytorch.py --summarize DIR     # the table of cnn_speed.sh from DIR's JSON files
"""
import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# One thread everywhere: Debian's PyTorch runs fp32 GEMMs (the linear layers) through the system
# BLAS (BLAS_INFO = generic), convolutions through its bundled oneDNN (MKL-DNN 2.6).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

BATCH, CLASSES, LR = 64, 10, 0.05
PARAMS = 32 * 25 + 32 + 64 * 32 * 25 + 64 + 1024 * 512 + 512 + 512 * 10 + 10  # tests/unit/model/test_model.cpp
# Issue 19: fp32 >= 1.5x PyTorch fp32 and >= 4,100 samples/s; bf16 >= 2.5x PyTorch.
TARGET_FP32_RATIO, TARGET_FP32_RATE, TARGET_BF16_RATIO = 1.5, 4100.0, 2.5


def import_torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def make_model(torch):
    nn = torch.nn
    return nn.Sequential(  # arch_cnn.cpp: conv 5x5 valid + fused ReLU, 2x2 max-pool, ...
        nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2),    # [32, 24, 24] -> [32, 12, 12]
        nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2),   # [64, 8, 8] -> [64, 4, 4]
        nn.Flatten(),                                       # [1024]
        nn.Linear(1024, 512), nn.ReLU(),                    # make_linear(1024, 512, relu = true)
        nn.Linear(512, CLASSES))                            # make_linear(512, 10, relu = false)


def rates(torch, bf16: bool, seconds: float, warmup: int = 20):
    """{samples_per_s (wall), cpu_samples_per_s (user + system CPU time), steps, minor page faults
    and system CPU ms per step} of the training step."""
    torch.manual_seed(1)
    model = make_model(torch)
    params = sum(p.numel() for p in model.parameters())
    assert params == PARAMS, f"PyTorch model has {params} parameters, lowsync's cnn has {PARAMS}"
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    batches = [(torch.rand(BATCH, 1, 28, 28), torch.randint(0, CLASSES, (BATCH,))) for _ in range(4)]

    def step(i):
        x, y = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()

    for i in range(warmup):  # as bench_step: 20 steps of warm-up
        step(i)
    steps, start, cpu0, ru0 = 0, time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    while time.perf_counter() - start < seconds:
        step(steps)
        steps += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    ru1, n = resource.getrusage(resource.RUSAGE_SELF), max(steps, 1)
    return {"samples_per_s": BATCH * steps / wall, "cpu_samples_per_s": BATCH * steps / max(cpu, 1e-9),
            "steps": steps, "minor_faults_per_step": (ru1.ru_minflt - ru0.ru_minflt) / n,
            "sys_ms_per_step": 1e3 * (ru1.ru_stime - ru0.ru_stime) / n}


# glibc's malloc hands PyTorch's freed activation buffers back to the kernel (munmap / heap trim),
# so every step faults its multi-MB activations in again (thousands of minor faults per step);
# cnn_speed.sh also runs PyTorch with these set, which keeps them in the heap.
MALLOC_TUNED = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "4294967296",
                "MALLOC_TOP_PAD_": "268435456"}


def variant():
    tuned = [k for k in MALLOC_TUNED if k in os.environ]
    if not tuned:
        return "stock"
    return "malloc-tuned (" + ", ".join(f"{k}={os.environ[k]}" for k in tuned) + ")"


def backend_lines(torch):
    """What PyTorch computes with: the BLAS mapped into this process, oneDNN, the ATen ISA."""
    maps = open("/proc/self/maps").read()
    blas = sorted({line.split()[-1] for line in maps.splitlines()
                   if "blas" in line.rsplit("/", 1)[-1] and line.split()[-1].startswith("/")})
    openblas = any("openblas" in p for p in blas)
    out = [f"PyTorch {torch.__version__}, {torch.get_num_threads()} thread(s)",
           f"BLAS: {'OpenBLAS' if openblas else 'not OpenBLAS (reference BLAS?)'} ({', '.join(blas) or 'none mapped'})",
           f"oneDNN (mkldnn): available {torch.backends.mkldnn.is_available()}, "
           f"enabled {torch.backends.mkldnn.enabled}"]
    for line in torch.__config__.show().splitlines():
        line = line.strip().lstrip("- ")
        if line.startswith(("Intel(R) MKL-DNN", "oneDNN", "CPU capability", "OpenMP")):
            out.append(line)
        elif line.startswith("Build settings:"):
            keep = [kv.strip() for kv in line.split(":", 1)[1].split(",")
                    if kv.strip().startswith(("BLAS_INFO", "USE_MKLDNN", "USE_OPENMP"))]
            out.append("Build: " + ", ".join(keep))
    return out


def onednn_primitives():
    """{precision: {"kind impl": count}}: the oneDNN primitives one training step executes
    (ONEDNN_VERBOSE in a child process per precision: oneDNN's C stdio buffer and Python's
    would interleave out of order in one process)."""
    env = dict(os.environ, ONEDNN_VERBOSE="1", DNNL_VERBOSE="1")
    found = {}
    for precision in ("fp32", "bf16"):
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--probe-step", precision],
                           env=env, capture_output=True, text=True)
        prims = found.setdefault(precision, {})
        for line in r.stdout.splitlines():
            f = line.split(",")
            if len(f) > 5 and f[0] in ("onednn_verbose", "dnnl_verbose") and f[1] == "exec":
                key = f"{f[3]} {f[4]}"  # primitive kind, implementation
                prims[key] = prims.get(key, 0) + 1
    return found


def probe_step(torch, precision):
    torch.set_num_threads(1)
    rates(torch, precision == "bf16", 0.0, warmup=1)


def lowsync_rates(path):
    """{precision: (samples_per_s, cpu_samples_per_s)} from bench_step's JSON."""
    out = {}
    for b in json.load(open(path))["benchmarks"]:
        name = b["name"].split("/")
        if len(name) > 1 and name[1] in ("cnn", "cnn_bf16"):
            out["bf16" if name[1] == "cnn_bf16" else "fp32"] = (b["samples_per_s"], b["cpu_samples_per_s"])
    return out


def summarize(folder):
    """The medians over the repeats in `folder` and the ratios lowsync / PyTorch."""
    ours = [lowsync_rates(p) for p in sorted(glob.glob(os.path.join(folder, "lowsync_*.json")))]
    if not ours:
        sys.exit(f"cnn_pytorch: no lowsync_*.json in {folder}")
    theirs = {}  # variant -> [result]
    backend = []
    for p in sorted(glob.glob(os.path.join(folder, "pytorch_*.json"))):
        r = json.load(open(p))
        theirs.setdefault(r["variant"], []).append(r)
        backend = backend or [b for b in r["backend"]]

    def med(vals):
        return statistics.median(vals) if vals else None

    rows = []  # (label, wall, cpu, [wall per repeat], extra)
    for precision in ("fp32", "bf16"):
        w = [o[precision][0] for o in ours if precision in o]
        c = [o[precision][1] for o in ours if precision in o]
        if w:
            rows.append((("lowsync", precision), f"lowsync {precision}" + (" native" if precision == "bf16" else ""),
                         med(w), med(c), w, ""))
    for v, results in sorted(theirs.items(), key=lambda kv: kv[0] != "stock"):
        for precision in ("fp32", "bf16"):
            rs = [r[precision] for r in results]
            w = [r["samples_per_s"] for r in rs]
            extra = (f"{med([r['minor_faults_per_step'] for r in rs]):,.0f} faults, "
                     f"{med([r['sys_ms_per_step'] for r in rs]):.1f} ms sys per step")
            name = "PyTorch " + ("fp32" if precision == "fp32" else "bf16 autocast") + ", " + v.split(" ")[0]
            rows.append(((v, precision), name, med(w), med([r["cpu_samples_per_s"] for r in rs]), w, extra))
    by = {k: (w, c) for k, _, w, c, _, _ in rows}

    print(f"\nCNN training step, batch {BATCH}, 1 thread: medians of {len(ours)} alternated repeat(s)")
    for line in backend:
        print(f"  {line}")
    for v in theirs:
        if v != "stock":
            print(f"  {v.split(' ')[0]}: PyTorch run with {v.split(' ', 1)[1][1:-1]}")
    print(f"{'row':<36}{'wall samples/s':>15}{'cpu samples/s':>15}   wall per repeat; PyTorch medians of faults, sys")
    for _, name, w, c, each, extra in rows:
        print(f"{name:<36}{w:>15,.0f}{c:>15,.0f}   " + ", ".join(f"{x:,.0f}" for x in each)
              + (f"; {extra}" if extra else ""))
    if not theirs:
        print("(no PyTorch rows: python3-torch is not installed; no ratios)")
        return

    print(f"\n{'ratio of medians':<52}{'wall':>7}{'cpu':>7}   target (verdict by wall clock)")
    for v in sorted(theirs, key=lambda x: x != "stock"):
        tag = v.split(" ")[0]
        for ours_p, their_p, target in (("fp32", "fp32", TARGET_FP32_RATIO), ("bf16", "fp32", TARGET_BF16_RATIO),
                                        ("bf16", "bf16", TARGET_BF16_RATIO)):
            a, b = by.get(("lowsync", ours_p)), by[(v, their_p)]
            if a is None:
                continue
            their_name = "fp32" if their_p == "fp32" else "bf16 autocast"
            label = f"lowsync {ours_p} / PyTorch {their_name} ({tag})"
            rw, rc = a[0] / b[0], a[1] / b[1]
            print(f"{label:<52}{rw:>7.2f}{rc:>7.2f}   >= {target}x: {'met' if rw >= target else 'missed'}")
    w = by[("lowsync", "fp32")][0]
    print(f"{'lowsync fp32 samples/s (wall)':<52}{w:>7,.0f}{'':>7}   >= {TARGET_FP32_RATE:,.0f}: "
          f"{'met' if w >= TARGET_FP32_RATE else 'missed'}")
    print("(issue 19's bf16 target, >= 2.5x PyTorch, is shown against PyTorch fp32, the issue's baseline, "
          "and against PyTorch's own bf16 autocast)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per precision (default 10)")
    ap.add_argument("--out", help="write the rates and backend lines as JSON to this file")
    ap.add_argument("--summarize", metavar="DIR", help="print the medians of DIR/lowsync_*.json (bench_step) "
                    "and DIR/pytorch_*.json (--out of this script) with the ratios")
    ap.add_argument("--no-probe", action="store_true", help="skip listing the oneDNN primitives PyTorch runs")
    ap.add_argument("--probe-step", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    torch = import_torch()
    if torch is None:
        print("cnn_pytorch: PyTorch is not installed (apt-get install python3-torch; run /usr/bin/python3); skipped")
        sys.exit(77)
    if args.probe_step:
        probe_step(torch, args.probe_step)
        return
    torch.set_num_threads(1)
    result = {"variant": variant()}
    for precision in ("fp32", "bf16"):
        result[precision] = rates(torch, precision == "bf16", args.seconds)
    result["backend"] = backend_lines(torch)
    if not args.no_probe:
        for precision, prims in onednn_primitives().items():
            result["backend"].append(f"oneDNN primitives, one {precision} step: "
                                     + (", ".join(f"{k} x{n}" for k, n in sorted(prims.items())) or "none"))
    for line in result["backend"]:
        print(line)
    print(f"{'PyTorch, ' + result['variant'].split(' ')[0] + ', batch 64':<30}{'wall samples/s':>16}"
          f"{'cpu samples/s':>16}{'steps':>8}{'faults/step':>13}{'sys ms/step':>13}")
    for precision in ("fp32", "bf16"):
        r = result[precision]
        label = "fp32" if precision == "fp32" else "bf16 autocast"
        print(f"{label:<30}{r['samples_per_s']:>16,.0f}{r['cpu_samples_per_s']:>16,.0f}{r['steps']:>8}"
              f"{r['minor_faults_per_step']:>13,.0f}{r['sys_ms_per_step']:>13.1f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
