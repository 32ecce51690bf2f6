#!/usr/bin/python3
"""DeMo against allreduce + AdamW and allreduce + SGD at equal steps (issue 6).

For each model (Fashion-MNIST MLP, CNN) on RANKS ranks, IID:
  1. lr grid: every method at each lr of its grid for GRID_STEPS steps; the lr with the lowest
     final training loss wins (per model and method). While the winner is the largest (smallest)
     lr of the grid, the grid is extended on that side by its own ratio (at most EXTEND times).
  2. comparison: every method at its chosen lr for STEPS steps (same seed, data, batch, log.every),
     plus DeMo with fp32 wire values at the lr chosen for DeMo (bf16 values).
Methods: sgd = allreduce + plain SGD (momentum 0), adamw = allreduce + AdamW (betas 0.9/0.999),
demo = sync.strategy demo (ALGORITHMS.md §5, defaults beta 0.999, topk 32, chunk 64, u16 indices)
with bf16 wire values; demo-fp32 the same with fp32 values. No weight decay anywhere.

Final training loss = summary.json final_loss: the mean over ranks and over the last LOG_EVERY
steps (metrics.csv windows), the same window for every run of a model. Test accuracy: the full
10k test set once at the end. Bytes/rank/step: the wire bytes of each rank (rank mean) of the
per-step traffic (ledger classes other than the one-time start broadcast `model` and the
evaluation `obs.*`), divided by the steps; the ratio is against the measured fp32 gradient
allreduce of the same model (the adamw row; sgd sends the same).

usage: tools/bench/demo_compare.py [--models mlp,cnn] [--mlp-steps 1000] [--cnn-steps 300]
         [--mlp-grid-steps 300] [--cnn-grid-steps 100] [--mlp-log-every 100] [--cnn-log-every 50]
         [--lr-sgd 0.05,0.1,0.2] [--lr-adamw 3e-4,1e-3,3e-3] [--lr-demo 3e-4,1e-3,3e-3] [--extend 2]
         [--out runs/demo-compare-...] [--set key=value ...]
Runs one mpirun at a time; a run whose OUT/<tag>/summary.json exists is reused (rerun with the
same --out to resume). Writes OUT/results.json and OUT/table.md; prints the tables.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METHODS = {
    "sgd": ["sync.strategy=allreduce", "optim.name=sgd"],
    "adamw": ["sync.strategy=allreduce", "optim.name=adamw"],
    "demo": ["sync.strategy=demo", "optim.name=demo", "optim.demo.value=bf16"],
    "demo-fp32": ["sync.strategy=demo", "optim.name=demo", "optim.demo.value=fp32"],
}
LABEL = {"sgd": "allreduce + SGD", "adamw": "allreduce + AdamW",
         "demo": "DeMo (bf16 values)", "demo-fp32": "DeMo (fp32 values)"}


def run(args, model, method, lr, steps, log_every):
    tag = f"{model}-{method}-lr{lr:g}-s{steps}"
    out = os.path.join(args.out, tag)
    if not os.path.exists(os.path.join(out, "summary.json")):
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-n", str(args.ranks),
               args.lowsync, "train", "--out", out]
        sets = [f"model.arch={model}", f"train.steps={steps}", f"log.every={log_every}", "eval.every=0",
                "log.progress=off", "data.partition=iid", f"optim.lr={lr:g}"] + METHODS[method] + args.set
        for kv in sets:
            cmd += ["--set", kv]
        t0 = time.time()
        with open(out + ".log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, OMP_NUM_THREADS="1")).returncode
        if rc != 0:
            print(f"  {tag}: exit {rc}, see {out}.log", flush=True)
            return {"model": model, "method": method, "lr": lr, "steps": steps, "error": f"exit {rc}"}
        print(f"  {tag}: {time.time() - t0:.0f} s", flush=True)
    s = json.load(open(os.path.join(out, "summary.json")))
    per_step = sum(v for k, v in s["bytes_by_traffic"].items() if k != "model" and not k.startswith("obs"))
    return {"model": model, "method": method, "lr": lr, "steps": s["steps"], "log_every": log_every,
            "final_loss": s["final_loss"], "test_acc": s["final_test_accuracy"],
            "bytes_per_rank_per_step": per_step / s["steps"], "bytes_by_traffic": s["bytes_by_traffic"],
            "wall_s": s["wall_s"], "out": out}


def grid_table(rows):
    lines = ["| model | method | lr | steps | final train loss | test acc |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | {r['lr']:g} | {r['steps']} | error | |")
        else:
            lines.append(f"| {r['model']} | {r['method']} | {r['lr']:g} | {r['steps']} | "
                         f"{r['final_loss']:.4f} | {r['test_acc']:.4f} |")
    return "\n".join(lines)


def main_table(rows):
    lines = ["| model | method | lr | steps | final train loss | loss vs AdamW | test acc | bytes/rank/step "
             "| fp32 allreduce ÷ this |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {LABEL[r['method']]} | {r['lr']:g} | {r['steps']} | error |")
            continue
        ref = next((q for q in rows if q["model"] == r["model"] and q["method"] == "adamw" and "error" not in q), None)
        rel = f"{100 * (r['final_loss'] / ref['final_loss'] - 1):+.1f}%" if ref else "—"
        ratio = f"{ref['bytes_per_rank_per_step'] / r['bytes_per_rank_per_step']:.1f}x" if ref else "—"
        lines.append(f"| {r['model']} | {LABEL[r['method']]} | {r['lr']:g} | {r['steps']} | {r['final_loss']:.4f} | "
                     f"{rel} | {r['test_acc']:.4f} | {r['bytes_per_rank_per_step']:,.0f} | {ratio} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lowsync", default=os.path.join(ROOT, "build/bin/lowsync"))
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "demo-compare-" + time.strftime("%Y%m%d-%H%M%S")))
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--models", default="mlp,cnn")
    for m, steps, grid, every in (("mlp", 1000, 300, 100), ("cnn", 300, 100, 50)):
        p.add_argument(f"--{m}-steps", type=int, default=steps)
        p.add_argument(f"--{m}-grid-steps", type=int, default=grid)
        p.add_argument(f"--{m}-log-every", type=int, default=every)
    p.add_argument("--lr-sgd", default="0.05,0.1,0.2")
    p.add_argument("--lr-adamw", default="3e-4,1e-3,3e-3")
    p.add_argument("--lr-demo", default="3e-4,1e-3,3e-3")
    p.add_argument("--extend", type=int, default=2, help="grid extensions while the best lr is on an edge")
    p.add_argument("--set", action="append", default=[], help="key=value added to every run")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    grids = {m: [float(x) for x in getattr(args, f"lr_{m}").split(",") if x] for m in ("sgd", "adamw", "demo")}
    grid_rows, main_rows, chosen = [], [], {}
    for model in args.models.split(","):
        steps, gsteps, every = (getattr(args, f"{model}_{k}") for k in ("steps", "grid_steps", "log_every"))
        print(f"{model}: lr grid, {gsteps} steps", flush=True)
        for method, lrs in grids.items():
            lrs = sorted(lrs)
            rs = [run(args, model, method, lr, gsteps, every) for lr in lrs]
            # A winner on the edge of the grid is not a tuned lr: extend the grid by its own
            # ratio on that side (at most --extend times).
            for _ in range(args.extend):
                ok = [r for r in rs if "error" not in r]
                if not ok or len(lrs) < 2:
                    break
                best = min(ok, key=lambda r: r["final_loss"])["lr"]
                if best == lrs[-1]:
                    lr = float(f"{lrs[-1] * lrs[-1] / lrs[-2]:.3g}")
                    lrs.append(lr)
                elif best == lrs[0]:
                    lr = float(f"{lrs[0] * lrs[0] / lrs[1]:.3g}")
                    lrs.insert(0, lr)
                else:
                    break
                print(f"  {model} {method}: best lr {best:g} on the grid edge, adding {lr:g}", flush=True)
                rs.append(run(args, model, method, lr, gsteps, every))
            rs.sort(key=lambda r: r["lr"])
            grid_rows += rs
            ok = [r for r in rs if "error" not in r]
            chosen[(model, method)] = min(ok, key=lambda r: r["final_loss"])["lr"] if ok else lrs[0]
        print(f"{model}: comparison, {steps} steps", flush=True)
        for method in ("adamw", "sgd", "demo", "demo-fp32"):
            lr = chosen[(model, "demo" if method == "demo-fp32" else method)]
            main_rows.append(run(args, model, method, lr, steps, every))
    json.dump({"args": vars(args), "grid": grid_rows, "comparison": main_rows,
               "chosen_lr": {f"{m}/{k}": v for (m, k), v in chosen.items()}},
              open(os.path.join(args.out, "results.json"), "w"), indent=1)
    text = ("### lr grid (lowest final training loss wins)\n\n" + grid_table(grid_rows) +
            "\n\n### Equal steps at the chosen lr\n\n" + main_table(main_rows) + "\n")
    open(os.path.join(args.out, "table.md"), "w").write(text)
    print(text)
    return 1 if any("error" in r for r in grid_rows + main_rows) else 0


if __name__ == "__main__":
    sys.exit(main())
