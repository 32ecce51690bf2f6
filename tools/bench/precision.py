#!/usr/bin/env python3
"""Precision comparison (issue 7 "What it must show"), one run per row on RANKS ranks.

Table 1: compute precision (fp32, bf16 and fp16 with native 16-bit storage, fp8 fake-quant) at
equal steps with DDP allreduce: test accuracy, samples/s, peak RSS, the bytes of parameters +
gradients + optimizer state as stored (plus the fp32 staging of native 16-bit layers) and the
ratio fp32/this, the same with the training batch's activations and their gradients added, and
every tracked buffer's peak (train_state_bytes: activations, eval plan, ...).
Table 2: periodic averaging and FDA with fp32 vs 8/16-bit wire: the fp32 run's final accuracy is
the target; bytes per rank at the first evaluation reaching it (the low-precision runs get
STEPS * SLACK steps so they can catch up), and the ratio to fp32.
Table 3 (--only storage): periodic averaging and FDA with fp32 compute, then bf16 and fp16 compute
on native 16-bit storage and on float storage (wire fp32, and with --storage-wires fp32,compute also
the compute format's 16-bit wire; STEPS steps each): test accuracy, MB sent
per rank, syncs, parameters + gradients + optimizer state as stored, and the strategy's own
model-sized state as stored (summary.json strategy_state_bytes: FDA w0, w0_prev, xi).

usage: tools/bench/precision.py [--ranks 4] [--steps 1000] [--arch mlp] [--optim sgd|adamw] [--lr 0.05]
                               [--out DIR] [--only compute|wire|storage] [--fda-threshold-per-param C]
Accuracy and bytes do not depend on machine load; samples/s does (noisy on a shared machine).
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(lowsync, ranks, out, sets, log):
    cmd = [os.path.join(ROOT, "jobs/lib/launch.sh"), str(ranks), lowsync, "train"]
    for kv in sets:
        cmd += ["--set", kv]
    cmd += ["--out", out]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t = time.time()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        print(f"precision.py: run failed ({rc}): see {log}", file=sys.stderr)
        return None
    s = json.load(open(os.path.join(out, "summary.json")))
    s["_elapsed"] = time.time() - t
    with open(os.path.join(out, "metrics.csv")) as f:
        s["_rows"] = [r for r in csv.DictReader(f) if r["test_acc"] not in ("", None)]
    return s


def first_reach(summary, target):
    for r in summary["_rows"]:
        if float(r["test_acc"]) >= target:
            return int(float(r["step"])), float(r["bytes_sent"])
    return None, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--arch", default="mlp")
    ap.add_argument("--slack", type=float, default=2.0, help="step multiplier of the low-precision wire runs")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "precision-" + time.strftime("%Y%m%d-%H%M%S")))
    ap.add_argument("--only", choices=["compute", "wire", "storage"], default=None)
    ap.add_argument("--period", type=int, default=10, help="sync.period of the periodic runs")
    ap.add_argument("--storage-wires", default="fp32",
                    help="storage table: fp32 and/or 'compute' (precision.wire = the compute format)")
    ap.add_argument("--fda-threshold-per-param", type=float, default=None,
                    help="sync.fda.threshold_per_param of the storage table's FDA runs (default: the key's)")
    ap.add_argument("--computes", default="fp32,bf16,fp16,fp8",
                    help="comma list; fp32 first (the baseline); FORMAT:stochastic adds precision.update_rounding")
    ap.add_argument("--wires", default="fp32,bf16,fp8_e4m3", help="fp32 first: it sets the target")
    ap.add_argument("--optim", default="sgd")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--lowsync", default=os.path.join(ROOT, "build", "bin", "lowsync"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    # eval.batch = the training batch for every row: native 16-bit storage evaluates in chunks of
    # at most the training batch, so memory is compared at the same evaluation batch.
    common = [f"model.arch={a.arch}", f"optim.name={a.optim}", f"optim.lr={a.lr}", "log.every=50", "log.progress=off",
              "eval.batch=64"]
    md = []

    if a.only in (None, "compute"):
        rows = []
        for compute in a.computes.split(","):
            # "bf16:stochastic": the compute format with precision.update_rounding = stochastic.
            fmt, _, rounding = compute.partition(":")
            out = os.path.join(a.out, f"compute-{compute.replace(':', '-')}")
            s = run(a.lowsync, a.ranks, out,
                    common + ["sync.strategy=allreduce", f"precision.compute={fmt}", f"train.steps={a.steps}",
                              f"eval.every={a.steps}"] + ([f"precision.update_rounding={rounding}"] if rounding else []),
                    out + ".log")
            rows.append((compute, s))
        base = rows[0][1]
        md.append(f"### Compute precision ({a.arch}, {a.ranks} ranks, allreduce, {a.optim} lr {a.lr}, {a.steps} steps)\n")
        md.append("| compute | storage | test acc | vs fp32 (points) | samples/s | peak RSS MB | params+grads+optim MB "
                  "(+ staging) | fp32/this | + activations MB | fp32/this | all tracked buffers MB |")
        md.append("|---|---|---|---|---|---|---|---|---|---|---|")

        def state_mb(s):
            b = s["param_grad_optim_bytes"]
            return (b["stored"] + b.get("staging", 0)) / 1e6, b.get("staging", 0) / 1e6

        def with_activations_mb(s):  # the training batch's activation + activation-gradient buffers
            return state_mb(s)[0] + s.get("activation_bytes", 0) / 1e6

        for compute, s in rows:
            if s is None:
                md.append(f"| {compute} | not available in this build | | | | | | | |")
                continue
            d = 100 * (s["final_test_accuracy"] - base["final_test_accuracy"]) if base else float("nan")
            mb, stage = state_mb(s)
            act = s.get("activation_bytes", 0) / 1e6
            md.append(f"| {compute} | {s.get('precision_storage', 'float')} | {s['final_test_accuracy']:.4f} | {d:+.2f} | "
                      f"{s['samples_per_s']:.0f} | {s['peak_rss_bytes'] / 1e6:.1f} | {mb:.2f} (+{stage:.2f}) | "
                      f"{state_mb(base)[0] / mb:.2f}x | {act:.2f} | {with_activations_mb(base) / with_activations_mb(s):.2f}x | "
                      f"{s['train_state_bytes'] / 1e6:.2f} |")
        md.append("")

    if a.only in (None, "wire"):
        strategies = {
            "periodic": ["sync.strategy=periodic", "sync.period=10"],
            "fda": ["sync.strategy=fda", "sync.fda.estimator=linear"],
        }
        md.append(f"### Wire format ({a.arch}, {a.ranks} ranks; target = the fp32 run's final accuracy at "
                  f"{a.steps} steps; others run up to {int(a.steps * a.slack)} steps)\n")
        md.append("| strategy | wire | final acc | target | step reached | MB/rank to target | fp32/this bytes | syncs |")
        md.append("|---|---|---|---|---|---|---|---|")
        for name, sets in strategies.items():
            base = None
            for wire in a.wires.split(","):
                steps = a.steps if wire == "fp32" else int(a.steps * a.slack)
                out = os.path.join(a.out, f"{name}-{wire}")
                s = run(a.lowsync, a.ranks, out,
                        common + sets + [f"precision.wire={wire}", f"train.steps={steps}", "eval.every=50"],
                        out + ".log")
                if s is None:
                    md.append(f"| {name} | {wire} | failed | | | | | |")
                    continue
                if wire == "fp32":
                    base = s
                    target = s["final_test_accuracy"]
                step, b = first_reach(s, target)
                if wire == "fp32":
                    base_bytes = b
                ratio = f"{base_bytes / b:.2f}x" if b else "not reached"
                md.append(f"| {name} | {wire} | {s['final_test_accuracy']:.4f} | {target:.4f} | {step or '-'} | "
                          f"{(b or 0) / 1e6:.2f} | {ratio} | {s['syncs']} |")
        md.append("")

    if a.only == "storage":
        fda_sets = ["sync.strategy=fda", "sync.fda.estimator=linear"]
        if a.fda_threshold_per_param is not None:
            fda_sets.append(f"sync.fda.threshold_per_param={a.fda_threshold_per_param}")
        strategies = {"periodic": ["sync.strategy=periodic", f"sync.period={a.period}"], "fda": fda_sets}
        md.append(f"### Storage ({a.arch}, {a.ranks} ranks, {a.optim} lr {a.lr}, {a.steps} steps)\n")
        md.append("| strategy | compute | storage | wire | test acc | vs fp32 (points) | MB sent/rank | syncs | "
                  "params+grads+optim MB | strategy state MB | samples/s |")
        md.append("|---|---|---|---|---|---|---|---|---|---|---|")
        wires = a.storage_wires.split(",")
        for name, sets in strategies.items():
            base = None
            rows = [("fp32", "float", "fp32")]
            for compute in ("bf16", "fp16"):
                for wire in wires:
                    for storage in ("native", "float"):
                        rows.append((compute, storage, compute if wire == "compute" else wire))
            for compute, storage, wire in rows:
                out = os.path.join(a.out, f"storage-{name}-{compute}-{storage}-{wire}")
                s = run(a.lowsync, a.ranks, out,
                        common + sets + [f"precision.compute={compute}", f"precision.storage={storage}",
                                         f"precision.wire={wire}", f"train.steps={a.steps}",
                                         f"eval.every={a.steps}"], out + ".log")
                if s is None:
                    md.append(f"| {name} | {compute} | {storage} | {wire} | failed | | | | | | |")
                    continue
                if compute == "fp32":
                    base = s
                d = 100 * (s["final_test_accuracy"] - base["final_test_accuracy"]) if base else float("nan")
                st = s.get("strategy_state_bytes", {}).get("per_rank", float("nan"))
                md.append(f"| {name} | {compute} | {s['precision_storage']} | {wire} | {s['final_test_accuracy']:.4f} | "
                          f"{d:+.2f} | {s['bytes_sent_per_rank'] / 1e6:.2f} | {s['syncs']} | "
                          f"{s['param_grad_optim_bytes']['stored'] / 1e6:.2f} | {st / 1e6:.2f} | {s['samples_per_s']:.0f} |")
        md.append("")

    text = "\n".join(md)
    open(os.path.join(a.out, "precision.md"), "w").write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
