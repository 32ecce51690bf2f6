#!/usr/bin/python3
"""Compares lowsync runs: reads RUN_DIR... (a sweep's output folder stands for the runs inside it)
and writes DIR/report.md (table, winners, modeled projection), DIR/table.csv (the same numbers,
unformatted) and PNG figures. `lowsync compare` calls this script.

usage: compare.py RUN_DIR... --out DIR [--target-acc 0.85] [--calibration FILE] [--no-plots]
The calibration (tools/bench/bench_comm --json FILE) adds the link measured here to the modeled
projection and checks the model against the runs' measured communication time; without the
option, a calibration.json in a run folder's parent folder (tools/run.sh writes one) is used.
Exit status: 0 ok; 1 a run folder is missing or corrupt, or matplotlib is missing (one line on
stderr); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import calibration as calibration_check  # noqa: E402
import netmodel  # noqa: E402
from runs import RunData, RunError, assign_labels, discover, fmt_bytes  # noqa: E402

DEFAULT_TARGET = 0.85
FIGURES = {
    "overview.png": "who wins: test accuracy vs bytes sent, and bytes to target",
    "accuracy_vs_bytes.png": "test accuracy vs bytes sent per rank (log x)",
    "accuracy_vs_time.png": "test accuracy vs wall time",
    "accuracy_vs_steps.png": "test accuracy vs steps",
    "loss.png": "training and test loss",
    "bytes_per_step.png": "bytes sent per rank per step, by strategy",
    "modeled_time_to_target.png": "MODELED: projected time to target at 64-1024 ranks",
    "model_check.png": "the network model against the measured runs (needs a calibration)",
}


def fmt(v, spec: str, missing: str = "n/a") -> str:
    return missing if v is None else format(v, spec)


def fmt_seconds(s) -> str:
    if s is None:
        return "n/a"
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 100:
        return f"{s:.0f} s"
    return f"{s:.3g} s"


def table_rows(runs: list[RunData], target: float) -> list[dict]:
    rows = []
    for r in runs:
        reached = r.target_row(target) is not None
        rows.append({
            "run": r.label, "dir": str(r.path), "strategy": r.strategy, "precision": r.precision,
            "partition": r.partition, "ranks": r.ranks, "final_acc": r.final_accuracy,
            "time_to_target_s": r.time_to_target(target) if reached else None,
            "bytes_to_target": r.bytes_to_target(target) if reached else None,
            "steps_to_target": r.steps_to_target(target) if reached else None,
            "reached": reached, "total_bytes": r.total_bytes, "syncs": r.syncs,
            "samples_per_s": r.samples_per_s, "peak_rss_bytes": r.peak_rss,
            "train_state_bytes": r.train_state, "bytes_per_step": r.bytes_per_step,
            "compute_s_per_step": r.compute_s_per_step,
        })
    return rows


def sort_key(row: dict):
    # Runs that reached the target first, fewest bytes first; then by final accuracy.
    b = row["bytes_to_target"]
    return (0 if row["reached"] else 1, b if b is not None else 0,
            -(row["final_acc"] if row["final_acc"] is not None else -1))


def headline(rows: list[dict], target: float) -> str:
    reached = [r for r in rows if r["reached"]]
    if not reached:
        return f"No run reached {target:.0%} test accuracy"
    best = min(reached, key=lambda r: (r["bytes_to_target"] is None, r["bytes_to_target"] or 0))
    return f"Fewest bytes to {target:.0%}: {best['run']} ({fmt_bytes(best['bytes_to_target'])} per rank)"


def winners(rows: list[dict], target: float) -> list[str]:
    lines = []
    reached = [r for r in rows if r["reached"]]
    with_bytes = [r for r in reached if r["bytes_to_target"] is not None]
    if with_bytes:
        best = min(with_bytes, key=lambda r: r["bytes_to_target"])
        line = f"- **Fewest bytes per rank to {target:.0%}:** {best['run']} ({fmt_bytes(best['bytes_to_target'])})"
        base = [r for r in with_bytes if r["strategy"] == "allreduce" and r is not best]
        # Prefer the allreduce baseline of the same setting, so the ratio is like for like.
        same = [r for r in base if all(r[k] == best[k] for k in ("precision", "partition", "ranks"))]
        base = same or base
        if base and best["bytes_to_target"] > 0:
            ref = min(base, key=lambda r: r["bytes_to_target"])
            line += f", {ref['bytes_to_target'] / best['bytes_to_target']:.1f}x fewer than {ref['run']}"
        lines.append(line)
    with_time = [r for r in reached if r["time_to_target_s"] is not None]
    if with_time:
        best = min(with_time, key=lambda r: r["time_to_target_s"])
        lines.append(f"- **Fastest to {target:.0%} (wall time, measured here):** {best['run']} "
                     f"({fmt_seconds(best['time_to_target_s'])})")
    with_acc = [r for r in rows if r["final_acc"] is not None]
    if with_acc:
        best = max(with_acc, key=lambda r: r["final_acc"])
        lines.append(f"- **Best final test accuracy:** {best['run']} ({best['final_acc']:.2%})")
    missed = [r["run"] for r in rows if not r["reached"]]
    if missed:
        lines.append(f"- **Never reached {target:.0%}:** " + "; ".join(missed))
    return lines


def markdown_table(rows: list[dict], target: float) -> list[str]:
    t = f"{target:.0%}"
    head = ["Run", "Strategy", "Precision", "Partition", "Ranks", "Final acc", f"Time to {t}",
            f"Bytes/rank to {t}", "Total bytes/rank", "Syncs", "Samples/s", "Peak RSS", "Train state"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 5 + ["---:"] * 8) + "|"]
    for r in rows:
        nr = "not reached"
        cells = [r["run"], r["strategy"], r["precision"], r["partition"], fmt(r["ranks"], "d"),
                 fmt(r["final_acc"], ".2%"),
                 fmt_seconds(r["time_to_target_s"]) if r["reached"] else nr,
                 fmt_bytes(r["bytes_to_target"]) if r["reached"] else nr,
                 fmt_bytes(r["total_bytes"]), fmt(r["syncs"], ".0f"), fmt(r["samples_per_s"], ",.0f"),
                 fmt_bytes(r["peak_rss_bytes"]), fmt_bytes(r["train_state_bytes"])]
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return out


def modeled_section(runs: list[RunData], target: float, links: list) -> list[str]:
    ns = netmodel.PROJECTED_RANKS
    out = [
        "## Modeled projection (not measured)",
        "",
        "An alpha-beta network model projects each run to rank counts we did not run. Per step: the "
        "run's **measured** compute seconds plus **modeled** communication for its measured payload "
        "per step (from the byte ledger): ring allreduce 2(N-1)·alpha + 2(N-1)/N·S/beta, ring "
        "allgather (N-1)·alpha + (N-1)·s/beta, broadcast log2(N)·alpha + S/beta. "
        f"**Assumption: the number of steps to reach {target:.0%} stays as measured** at the run's "
        "own rank count; in reality it changes with the global batch and the data split, so read "
        "these numbers as the communication cost of each strategy, not as predictions. Overlap of "
        "communication with compute, congestion and stragglers are not modeled.",
        "",
    ]
    for link in links:
        out += [f"### {link.name} (alpha = {link.alpha_s * 1e6:g} us, beta = {link.beta_Bps / 1e9:g} GB/s)",
                "", "| Run | " + " | ".join(f"{n} ranks" for n in ns) + " |",
                "|---|" + "---:|" * len(ns)]
        skipped = []
        for r in runs:
            ys, why = netmodel.project(r, target, link)
            if ys is None:
                skipped.append(f"{r.label} ({why})")
                continue
            out.append(f"| {r.label} | " + " | ".join(fmt_seconds(y) for y in ys) + " |")
        if skipped:
            out += ["", "Not projected: " + "; ".join(skipped)]
        out.append("")
    return out


def fmt_error(e) -> str:
    return "n/a" if e is None else f"{e:+.0%}"


def model_check_section(checks: list, link) -> list[str]:
    out = ["## Model check: modeled vs measured communication at the measured rank counts", ""]
    if link is None:
        return out + ["No calibration: run `mpirun -n 2 build/bin/bench_comm --quick --json "
                      "calibration.json` and pass `--calibration calibration.json` to check the "
                      "model against these runs.", ""]
    out += [f"Link: {link.name}. Measured comm = the seconds each rank spent in the strategy's "
            "collectives (byte ledger, rank mean, so it includes waiting for slower ranks); modeled "
            "comm = the alpha-beta formulas for the same calls and payloads at the run's rank count. "
            "Measured step = the timed step from samples/s; modeled step = measured compute/step + "
            "modeled comm/step. Error = (modeled - measured) / measured.", ""]
    if not checks:
        return out + ["No run with a byte ledger and 2 or more ranks.", ""]
    out += ["| Run | Ranks | Measured comm | Modeled comm | Comm error | Measured step | Modeled step | Step error |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in checks:
        ms = f"{c.measured_step_s * 1e3:.2f} ms" if c.measured_step_s is not None else "n/a"
        mo = f"{c.modeled_step_s * 1e3:.2f} ms" if c.modeled_step_s is not None else "n/a"
        out.append(f"| {c.label} | {c.ranks} | {fmt_seconds(c.measured_comm_s)} | {fmt_seconds(c.modeled_comm_s)} | "
                   f"{fmt_error(c.comm_error)} | {ms} | {mo} | {fmt_error(c.step_error)} |")
    errs = [abs(c.comm_error) for c in checks if c.comm_error is not None]
    serrs = [abs(c.step_error) for c in checks if c.step_error is not None]
    if errs:
        out += ["", f"Mean absolute error: communication {sum(errs) / len(errs):.0%}"
                + (f", step time {sum(serrs) / len(serrs):.0%}" if serrs else "") + f" over {len(checks)} runs."]
    return out + [""]


def find_calibration(paths: list[Path]) -> Path | None:
    for p in paths:
        for d in (p.parent, p):
            c = d / "calibration.json"
            if c.is_file():
                return c
    return None


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Compare lowsync runs: report.md, table.csv, PNG plots.")
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--out", required=True, type=Path, help="output folder for the report")
    ap.add_argument("--target-acc", type=float, default=None,
                    help="target test accuracy, a fraction (default 0.85, lowered to the lowest "
                         "final accuracy when no run reaches it); 85 means 85%%")
    ap.add_argument("--calibration", type=Path, metavar="FILE",
                    help="bench_comm --json output: the link measured here (default: a "
                         "calibration.json in a run folder's parent)")
    ap.add_argument("--no-plots", action="store_true", help="write report.md and table.csv only")
    args = ap.parse_args(argv)
    explicit_target = args.target_acc is not None
    if not explicit_target:
        args.target_acc = DEFAULT_TARGET
    target = args.target_acc / 100 if args.target_acc > 1 else args.target_acc
    if not 0 < target <= 1:
        print(f"compare: --target-acc must be in (0, 1] or a percent, got {args.target_acc}",
              file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"compare: --out {args.out}: exists and is not a folder", file=sys.stderr)
        return 2
    plots = None
    if not args.no_plots:
        try:
            import plots  # noqa: F811
        except ImportError as e:
            print(f"compare: matplotlib unavailable ({e}); apt-get install python3-matplotlib "
                  "or pass --no-plots", file=sys.stderr)
            return 1
    try:
        paths, warnings = discover(args.runs)
        runs = [RunData.load(p) for p in paths]
    except RunError as e:
        print(f"compare: {e}", file=sys.stderr)
        return 1
    for w in warnings:
        print(f"compare: warning: {w}", file=sys.stderr)
    if not runs:
        print("compare: no finished runs found", file=sys.stderr)
        return 1
    assign_labels(runs)
    target_note = []
    finals = [r.final_accuracy for r in runs if r.final_accuracy is not None]
    if (not explicit_target and finals and not any(r.target_row(target) is not None for r in runs)
            and math.floor(min(finals) * 100) > 0):
        # Short runs: rather than a report where nobody wins, compare at an accuracy every run
        # reached (the lowest final accuracy, rounded down to a percent).
        lowered = math.floor(min(finals) * 100) / 100
        target_note = [f"No run reached the default target {target:.0%}: the target is lowered to "
                       f"{lowered:.0%}, the lowest final test accuracy of these runs (pass "
                       f"--target-acc to choose it).", ""]
        target = lowered
    rows = sorted(table_rows(runs, target), key=sort_key)
    by_label = {r.label: r for r in runs}
    runs = [by_label[row["run"]] for row in rows]

    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"compare: --out {args.out}: cannot create the folder: {e.strerror}", file=sys.stderr)
        return 1
    links = list(netmodel.PRESETS)
    measured = None
    calibration = args.calibration or find_calibration([r.path for r in runs])
    if calibration is not None:
        try:
            measured = netmodel.load_calibration(calibration)
        except ValueError as e:
            print(f"compare: {e}", file=sys.stderr)
            return 1
        links.append(measured)
    checks = [c for c in (netmodel.validate(r, measured) for r in runs) if c is not None] if measured else []

    md = [f"# lowsync comparison: {len(runs)} runs, target {target:.0%} test accuracy", "",
          *target_note, *winners(rows, target), "",
          f"Time and bytes to target are read at the first evaluation whose test accuracy is at "
          f"least {target:.0%} (so they depend on eval.every); bytes are wire bytes sent per rank, "
          f"cumulative. Measured on this machine unless marked modeled.", "",
          *markdown_table(rows, target), ""]
    if plots is not None:
        plots.overview(runs, target, headline(rows, target), args.out / "overview.png")
        plots.accuracy_vs(runs, "bytes_sent", "bytes sent per rank (log)", "test accuracy vs bytes sent",
                          target, args.out / "accuracy_vs_bytes.png", logx=True)
        plots.accuracy_vs(runs, "wall_s", "wall time (s)", "test accuracy vs wall time", target,
                          args.out / "accuracy_vs_time.png")
        plots.accuracy_vs(runs, "step", "step", "test accuracy vs steps", target,
                          args.out / "accuracy_vs_steps.png")
        plots.loss_curves(runs, args.out / "loss.png")
        plots.bytes_per_step(runs, args.out / "bytes_per_step.png")
        plots.modeled(runs, target, links, args.out / "modeled_time_to_target.png")
        if checks:
            plots.model_check(checks, measured, args.out / "model_check.png")
        md += ["## Figures", ""]
        md += [f"- [{name}]({name}): {what}" for name, what in FIGURES.items()
               if name != "model_check.png" or checks]
        md += ["", "![overview](overview.png)", ""]
    md += modeled_section(runs, target, links)
    md += model_check_section(checks, measured)
    if calibration is not None:  # per-step measured vs modeled comm, time-to-target order (issue 21)
        md += calibration_check.section(runs, calibration, target)
    md += ["## Runs", ""] + [f"- {r.label}: `{r.path}`" + (
        "" if r.final_accuracy is not None else " (no finite test accuracy: diverged, or never evaluated)")
        for r in runs] + [""]
    (args.out / "report.md").write_text("\n".join(md))
    write_csv(rows, args.out / "table.csv")
    print(f"compare: {len(runs)} runs -> {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
