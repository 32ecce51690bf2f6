#!/usr/bin/python3
"""The main job's schedule (tools/run.sh): runs a staged subset of the full grids that the
comparison sweep files define, so every strategy gets the same tuning budget in little time.
For each sweep file and each strategy in it (lr = the list "optim.lr", knob = the strategy's own
list key, runs.KNOBS, or the wire precision for a file that sweeps precisions):
  1. the lr grid at the middle knob value, first seed;
  2. the other knob values at the best lr of step 1, first seed;
  3. the best (knob, lr) of steps 1-2 with the remaining seeds.
"Best" = the best final quality (test accuracy, or validation loss for gpt); a diverged, stopped or
failed run is never best. A strategy the built lowsync does not know (`lowsync config` lists the
choices of sync.strategy) is skipped with a note. Every run goes through tools/sweep.py (same run
names and folders as the full sweep; finished runs are skipped, stopped ones resume), so
`jobs/local/sweep.sh FILE` later fills in the rest of the grid.

usage: mainjob.py SWEEP.toml... --out-root DIR [--lowsync BIN] [--dry-run]
Prints one line per run and a plan summary; exit 0 when every planned run finished (a failed run
is reported and left out of the choice), 2 on a bad sweep file.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import sweep  # noqa: E402  (tools/sweep.py)
from runs import KNOBS, RunData, RunError  # noqa: E402


def known_strategies(lowsync: str) -> set[str] | None:
    """The sync.strategy choices of the built binary (its `lowsync config` table row)."""
    try:
        text = subprocess.run([lowsync, "config"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in text.splitlines():
        if "sync.strategy" in line.split("|")[1 if line.startswith("|") else 0]:
            return set(re.findall(r"[a-z0-9_]+", line.split("sync.strategy", 1)[1]))
    return None


def arch_known(lowsync: str, arch: str) -> bool:
    try:
        text = subprocess.run([lowsync, "config"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any("model.arch" in line and re.search(rf"\b{re.escape(arch)}\b", line) for line in text.splitlines())


def sets_of(run) -> dict:
    return dict(s.partition("=")[::2] for s in run.sets)


def knob_key(runs: list, strategy: str) -> str | None:
    """The strategy's knob: its KNOBS key, or precision.wire when the file sweeps wire formats."""
    entry = KNOBS.get(strategy)
    if entry is not None:
        key = entry[0]
        if strategy == "fda" and len({sets_of(r).get(key) for r in runs}) <= 1:
            key = "sync.fda.threshold_per_param"
        if len({sets_of(r).get(key) for r in runs}) > 1:
            return key
    if len({sets_of(r).get("precision.wire") for r in runs}) > 1:
        return "precision.wire"
    return None


def value_order(values: list[str]) -> list[str]:
    def key(v):
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)
    return sorted(set(values), key=key)


class Runner:
    def __init__(self, lowsync: str, dry_run: bool):
        self.lowsync, self.dry_run = lowsync, dry_run
        self.launched = self.failed = self.skipped = 0
        self.seconds = 0.0

    def run(self, r) -> RunData | None:
        if sweep.is_complete(r.out, r):
            self.skipped += 1
            print(f"mainjob: {r.name}: complete, skipped", flush=True)
        else:
            cmd = sweep.launch_command(r, self.lowsync)
            print(f"mainjob: {r.name}", flush=True)
            if self.dry_run:
                return None
            r.out.mkdir(parents=True, exist_ok=True)
            t0 = time.monotonic()
            with open(str(r.out) + ".log", "w") as log:
                rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
            dt = time.monotonic() - t0
            self.seconds += dt
            self.launched += 1
            if rc not in (0, 3):
                self.failed += 1
                print(f"mainjob: {r.name}: failed (exit {rc}, {dt:.0f} s); see {r.out}.log", flush=True)
                return None
            print(f"mainjob: {r.name}: {dt:.1f} s", flush=True)
        try:
            return RunData.load(r.out)
        except RunError as e:
            print(f"mainjob: {r.name}: unreadable ({e})", flush=True)
            return None


def score(d: RunData | None, metric: str) -> float:
    if d is None or d.status != "ok":
        return float("-inf")
    q = d.final_quality(metric)
    if q is None:
        return float("-inf")
    return q if metric == "accuracy" else -q


def plan_strategy(runner: Runner, runs: list, strategy: str, metric: str) -> None:
    lr_values = value_order([sets_of(r).get("optim.lr", "") for r in runs])
    kkey = knob_key(runs, strategy)
    knobs = value_order([sets_of(r).get(kkey, "") for r in runs]) if kkey else [""]
    seeds = sorted({int(sets_of(r)["train.seed"]) for r in runs})

    def pick(knob: str, lr: str, seed: int):
        for r in runs:
            s = sets_of(r)
            if (s.get("optim.lr", "") == lr and (kkey is None or s.get(kkey, "") == knob)
                    and int(s["train.seed"]) == seed):
                return r
        return None

    mid = knobs[(len(knobs) - 1) // 2] if kkey != "precision.wire" else knobs[0]
    results: dict[tuple, float] = {}
    for lr in lr_values:
        r = pick(mid, lr, seeds[0])
        if r is not None:
            results[(mid, lr)] = score(runner.run(r), metric)
    best_lr = max(lr_values, key=lambda lr: results.get((mid, lr), float("-inf")))
    for k in knobs:
        if k == mid:
            continue
        r = pick(k, best_lr, seeds[0])
        if r is not None:
            results[(k, best_lr)] = score(runner.run(r), metric)
    if not results:
        return
    best = max(results, key=results.get)
    for seed in seeds[1:]:
        r = pick(best[0], best[1], seed)
        if r is not None:
            runner.run(r)
    what = f"{kkey}={best[0]}, " if kkey else ""
    print(f"mainjob: {strategy}: chose {what}optim.lr={best[1]} (of lr {', '.join(lr_values)}"
          + (f"; {kkey} {', '.join(knobs)}" if kkey else "") + f"), {len(seeds)} seeds", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweeps", nargs="+", type=Path)
    ap.add_argument("--out-root", required=True, type=Path)
    ap.add_argument("--lowsync", default=sweep.default_lowsync())
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--only", default="", help="space-separated strategies to run (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of every run (part of the run's identity: a changed value "
                         "needs a new --out-root)")
    args = ap.parse_args(argv)
    known = known_strategies(args.lowsync)
    only = set(args.only.split())
    runner = Runner(args.lowsync, args.dry_run)
    for path in args.sweeps:
        try:
            runs = sweep.load_sweep(path, args.out_root / path.stem)
        except sweep.SweepError as e:
            print(str(e), file=sys.stderr)
            return 2
        if args.set:
            over = dict(kv.partition("=")[::2] for kv in args.set)
            for r in runs:
                kept = [kv for kv in r.sets if kv.partition("=")[0] not in over]
                r.sets = kept + [f"{k}={v}" for k, v in over.items()]
        arch = {sets_of(r).get("model.arch", "mlp") for r in runs}
        missing_arch = [a for a in arch if not arch_known(args.lowsync, a)]
        if missing_arch and not args.dry_run:
            print(f"mainjob: {path.name}: skipped: this lowsync has no model.arch {missing_arch[0]} "
                  "(its branch is not merged yet)", flush=True)
            continue
        metric = "loss" if "gpt" in arch else "accuracy"
        by_strategy: dict[str, list] = {}
        for r in runs:
            by_strategy.setdefault(r.meta["strategy"], []).append(r)
        for strategy, rs in by_strategy.items():
            if only and strategy not in only:
                continue
            if known is not None and strategy not in known:
                print(f"mainjob: {path.name}: {strategy}: skipped: this lowsync does not know "
                      f"sync.strategy = {strategy} (its branch is not merged yet); the rows switch "
                      "on when it is", flush=True)
                continue
            plan_strategy(runner, rs, strategy, metric)
    print(f"mainjob: {runner.launched} runs launched ({runner.seconds:.0f} s), {runner.skipped} "
          f"already complete, {runner.failed} failed", flush=True)
    return 1 if runner.failed else 0


if __name__ == "__main__":
    sys.exit(main())
