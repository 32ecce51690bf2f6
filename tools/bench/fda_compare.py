#!/usr/bin/python3
"""Bytes-to-accuracy comparison of FDA against allreduce and periodic averaging (issue 5).

Trains the Fashion-MNIST MLP on RANKS ranks for each strategy row and each partition, evaluating
the replica average every EVAL steps, and reports per row: wire bytes per rank (strategy traffic,
rank mean, from metrics.csv) when the test accuracy first reaches each target, the best and final
accuracy, the syncs, the split of the bytes into monitoring (fda_monitor) and model sync traffic,
and the wall time. Rows run JOBS at a time (each an mpirun of RANKS processes).

usage: tools/bench/fda_compare.py [--lowsync build/bin/lowsync] [--out runs/fda-compare]
         [--partitions iid,dirichlet] [--steps 2000] [--eval-every 50] [--jobs 1]
         [--thetas 1,3,10,30] [--periods 10,25,50,100,200] [--set key=value ...]
Writes OUT/results.json and OUT/table.md; prints the tables.
"""
import argparse
import concurrent.futures
import csv
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rows(periods, thetas, estimators):
    out = [("allreduce", ["sync.strategy=allreduce"])]
    out += [(f"periodic P={p}", ["sync.strategy=periodic", f"sync.period={p}"]) for p in periods]
    for est in estimators:
        out += [(f"fda {est} Θ={t:g}", ["sync.strategy=fda", f"sync.fda.estimator={est}", f"sync.fda.threshold={t}"])
                for t in thetas]
    out.append(("none (no sync)", ["sync.strategy=none"]))
    return out


def run_one(args, partition, name, sets):
    tag = f"{partition}-" + "".join(c if c.isalnum() else "_" for c in name)
    out = os.path.join(args.out, tag)
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-n", str(args.ranks),
           args.lowsync, "train", "--out", out]
    common = ["model.arch=mlp", f"train.steps={args.steps}", f"eval.every={args.eval_every}",
              f"log.every={args.eval_every}", "log.progress=lines", f"data.partition={partition}",
              f"data.alpha={args.alpha}", "sync.check_every=0"] + args.set
    for kv in common + sets:
        cmd += ["--set", kv]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.time()
    with open(out + ".log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.time() - t0
    if rc != 0:
        return {"partition": partition, "name": name, "error": f"exit {rc}, see {out}.log"}
    return summarize(out, partition, name, sets, wall, args.targets)


def summarize(out, partition, name, sets, wall, targets):
    with open(os.path.join(out, "metrics.csv")) as f:
        metrics = [r for r in csv.DictReader(f)]
    summary = json.load(open(os.path.join(out, "summary.json")))
    evals = [(int(r["step"]), float(r["test_acc"]), float(r["bytes_sent"]), float(r["syncs"]))
             for r in metrics if r["test_acc"]]
    first = {}
    for t in targets:
        hit = next((e for e in evals if e[1] >= t), None)
        first[f"{t:g}"] = None if hit is None else {"step": hit[0], "bytes_per_rank": hit[2], "syncs": hit[3]}
    by_traffic = summary.get("bytes_by_traffic", {})
    return {
        "partition": partition, "name": name, "sets": sets,
        "first_reach": first,
        "best_accuracy": max(e[1] for e in evals),
        "final_accuracy": summary["final_test_accuracy"],
        "syncs": summary["syncs"],
        "bytes_per_rank": summary["bytes_sent_per_rank"],
        "monitor_bytes_per_rank": summary.get("monitor_bytes", by_traffic.get("fda_monitor", 0.0)),
        "sync_bytes_per_rank": summary.get("sync_bytes"),
        "wall_s": summary["wall_s"], "launch_wall_s": wall,
    }


def mb(x):
    if x is None:
        return "—"
    return f"{x / 1e6:.3g}" if x >= 1e5 else f"{x / 1e6:.2g}"


def sort_key(r):
    """Partition as given, then allreduce, periodic by period, FDA by estimator and Theta, none."""
    name = r["name"]
    num = float(name.split("=")[-1]) if "=" in name else 0.0
    kind = 0 if name == "allreduce" else 1 if name.startswith("periodic") else 3 if name.startswith("none") else 2
    est = next((i for i, e in enumerate(["naive", "linear", "sketch"]) if f" {e} " in name), 0)
    return (r["partition"] != "iid", kind, est, num)


def table(results, partition, targets):
    rs = [r for r in results if r["partition"] == partition and "error" not in r]
    head = "| row | " + " | ".join(f"MB/rank to {t:g} (step)" for t in targets) + \
           " | best acc | final acc | syncs | MB/rank total (monitor) | wall s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rs:
        cells = []
        for t in targets:
            h = r["first_reach"][f"{t:g}"]
            cells.append("not reached" if h is None else f"{mb(h['bytes_per_rank'])} ({h['step']})")
        lines.append(f"| {r['name']} | " + " | ".join(cells) +
                     f" | {r['best_accuracy']:.4f} | {r['final_accuracy']:.4f} | {r['syncs']} | "
                     f"{mb(r['bytes_per_rank'])} ({mb(r['monitor_bytes_per_rank'])}) | {r['wall_s']:.0f} |")
    for r in results:
        if r["partition"] == partition and "error" in r:
            lines.append(f"| {r['name']} | error: {r['error']} |")
    return "\n".join(lines)


def verdict(results, partition, target):
    """FDA's best bytes-to-target against allreduce and the best periodic row."""
    key = f"{target:g}"
    rs = [r for r in results if r["partition"] == partition and "error" not in r and r["first_reach"][key]]
    b = lambda r: r["first_reach"][key]["bytes_per_rank"]
    ar = [r for r in rs if r["name"] == "allreduce"]
    per = [r for r in rs if r["name"].startswith("periodic")]
    fda = [r for r in rs if r["name"].startswith("fda")]
    if not fda:
        return f"{partition}, target {target:g}: no FDA row reached it"
    best = min(fda, key=b)
    s = f"{partition}, target {target:g}: best FDA row {best['name']} {mb(b(best))} MB/rank"
    if ar:
        s += f"; allreduce {mb(b(ar[0]))} MB/rank = {b(ar[0]) / max(b(best), 1):.0f}x FDA"
    if per:
        bp = min(per, key=b)
        s += f"; best periodic {bp['name']} {mb(b(bp))} MB/rank ({b(bp) / max(b(best), 1):.2f}x FDA)"
    return s


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lowsync", default=os.path.join(ROOT, "build/bin/lowsync"))
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "fda-compare-" + time.strftime("%Y%m%d-%H%M%S")))
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--partitions", default="iid,dirichlet")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--jobs", type=int, default=1, help="rows run at the same time")
    p.add_argument("--periods", default="10,25,50,100,200")
    p.add_argument("--thetas", default="1,3,10,30")
    p.add_argument("--estimators", default="naive,linear,sketch")
    p.add_argument("--targets", default="0.85,0.8,0.75")
    p.add_argument("--only", default="", help="comma-separated row-name prefixes to run (default all)")
    p.add_argument("--set", action="append", default=[], help="key=value added to every run")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of OUT/results.json that this invocation does not rerun")
    args = p.parse_args()
    args.targets = [float(t) for t in args.targets.split(",")]
    os.makedirs(args.out, exist_ok=True)
    grid = rows([int(x) for x in args.periods.split(",") if x],
                [float(x) for x in args.thetas.split(",") if x], [e for e in args.estimators.split(",") if e])
    if args.only:
        grid = [g for g in grid if any(g[0].startswith(o) for o in args.only.split(","))]
    partitions = args.partitions.split(",")
    jobs = [(part, name, sets) for part in partitions for name, sets in grid]
    results = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futs = {pool.submit(run_one, args, *j): j for j in jobs}
        for f in concurrent.futures.as_completed(futs):
            r = f.result()
            results.append(r)
            print(f"done {r['partition']:<9} {r['name']:<20} "
                  + (r["error"] if "error" in r else f"best {r['best_accuracy']:.4f} syncs {r['syncs']}"),
                  flush=True)
    path = os.path.join(args.out, "results.json")
    if args.merge and os.path.exists(path):
        done = {(r["partition"], r["name"]) for r in results}
        results += [r for r in json.load(open(path))["results"] if (r["partition"], r["name"]) not in done]
    results.sort(key=sort_key)
    json.dump({"args": vars(args), "results": results}, open(path, "w"), indent=1)
    md = []
    for part in partitions:
        md.append(f"### {part}" + (f" (α = {args.alpha:g})" if part == "dirichlet" else "") + "\n")
        md.append(table(results, part, args.targets) + "\n")
        md += [verdict(results, part, t) + "  " for t in args.targets]
        md.append("")
    text = "\n".join(md)
    open(os.path.join(args.out, "table.md"), "w").write(text + "\n")
    print(text)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
