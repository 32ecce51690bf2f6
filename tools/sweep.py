#!/usr/bin/python3
"""Expands a sweep TOML into lowsync runs and launches them locally or as a Slurm job array.

A sweep is the product strategies x (per-strategy list keys) x precisions x partitions x ranks x
seeds, in that order (a run's index is its Slurm array task id); fixed keys come from
[set], per-strategy keys from [strategy.<name>]. See jobs/sweeps/*.toml for the format:

    name = "strategies"            # default: the file's stem
    config = "base.toml"           # optional --config, relative to this file
    out_root = "runs/sweeps/x"     # default runs/sweeps/<name>; a run writes to <out_root>/<run name>
    strategies = ["allreduce", "periodic"]
    precisions = ["fp32", "bf16/fp8_e4m3"]        # compute/wire; one word = both
    partitions = ["iid", "dirichlet:0.1"]          # dirichlet:<alpha> / by_source:<alpha> also set data.alpha
    ranks = [4]
    seeds = [1, 2]
    [set]
    "train.steps" = 500
    [strategy.periodic]
    "sync.period" = [4, 16]        # a list expands; its value becomes part of the run name

A run is done when its summary.json says "stopped_early": false (and, when [set] fixes
train.steps, reached it); a run stopped by a signal or train.max_seconds, or one that left only
checkpoints, resumes from its latest checkpoint with --resume; `list` shows each run's state.

Subcommands: list, slurm-groups, slurm-array-count, max-ranks, run-local, run-index I.
slurm-groups prints one line per rank count, "RANKS<tab>ARRAY<tab>COUNT" (ARRAY as sbatch
--array takes it, e.g. "0,2-5"), so jobs/slurm/submit_sweep.sh submits one job array per rank
count, each with --ntasks=RANKS. Under Slurm, run-index sets train.threads from
SLURM_CPUS_PER_TASK unless the sweep sets it. Every printed command line is shell-quoted.
Exit status: 0 ok, 2 bad sweep file or arguments, 1 some run failed; run-index replaces itself
with the launcher, so its status is the trainer's (3 = stopped after a checkpoint, requeue-able).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LAUNCH_SH = REPO_ROOT / "jobs" / "lib" / "launch.sh"

COMPUTE_DTYPES = ("fp32", "bf16", "fp16", "fp8")
WIRE_DTYPES = ("fp32", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2")
PARTITIONS = ("iid", "dirichlet", "shards", "by_source")  # by_source: text workloads (gpt)
ALPHA_PARTITIONS = ("dirichlet", "by_source")
# Keys set by the sweep axes; [set] and [strategy.*] may not set them as well.
AXIS_KEYS = ("sync.strategy", "precision.compute", "precision.wire", "data.partition", "train.seed")
TOP_LEVEL_KEYS = {"name", "config", "out_root", "strategies", "precisions", "partitions", "ranks",
                  "seeds", "set", "strategy"}


class SweepError(Exception):
    """A bad sweep file or argument; printed as one line."""


@dataclass
class Run:
    index: int
    name: str
    ranks: int
    sets: list[str]  # "key=value" for --set, in a fixed order
    out: Path
    config: Path | None = None
    meta: dict = field(default_factory=dict)

    def train_args(self, lowsync: str, out: Path | None = None, resume: bool = False,
                   force: bool = False) -> list[str]:
        out = out if out is not None else self.out
        args = [lowsync, "train"]
        if self.config is not None:
            args += ["--config", str(self.config)]
        for s in self.sets:
            args += ["--set", s]
        args += ["--out", str(out)]
        if resume:
            args += ["--resume", str(out)]
        elif force:
            args += ["--force"]
        return args


def format_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            raise SweepError(f"sweep: value {v} cannot be passed to --set")
        return repr(v)
    if isinstance(v, (int, str)):
        return str(v)
    raise SweepError(f"sweep: value {v!r} must be a string, number or boolean")


def flatten(table: dict, prefix: str = "") -> dict:
    """{"train": {"steps": 5}} and {"train.steps": 5} both become {"train.steps": 5}."""
    out = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def parse_precision(p) -> tuple[str, str]:
    if isinstance(p, dict):
        compute, wire = p.get("compute", "fp32"), p.get("wire", "fp32")
    elif isinstance(p, str) and "/" in p:
        compute, _, wire = p.partition("/")
    elif isinstance(p, str):
        compute = wire = p
    else:
        raise SweepError(f"sweep: precision {p!r} must be 'compute/wire', one dtype or a table")
    if compute not in COMPUTE_DTYPES:
        raise SweepError(f"sweep: precision compute dtype {compute!r} not in {COMPUTE_DTYPES}")
    if wire not in WIRE_DTYPES:
        raise SweepError(f"sweep: precision wire dtype {wire!r} not in {WIRE_DTYPES}")
    return compute, wire


def parse_partition(p) -> tuple[str, float | None]:
    if isinstance(p, dict):
        name, alpha = p.get("partition", "iid"), p.get("alpha")
    elif isinstance(p, str):
        name, _, alpha_text = p.partition(":")
        alpha = None
        if alpha_text:
            try:
                alpha = float(alpha_text)
            except ValueError:
                raise SweepError(f"sweep: partition {p!r}: alpha {alpha_text!r} is not a number") from None
    else:
        raise SweepError(f"sweep: partition {p!r} must be 'iid', 'shards', 'dirichlet[:alpha]' or 'by_source[:alpha]'")
    if name not in PARTITIONS:
        raise SweepError(f"sweep: partition {name!r} not in {PARTITIONS}")
    if alpha is not None and name not in ALPHA_PARTITIONS:
        raise SweepError(f"sweep: partition {p!r}: alpha only applies to {' and '.join(ALPHA_PARTITIONS)}")
    return name, alpha


def as_list(doc: dict, key: str, default: list) -> list:
    v = doc.get(key, default)
    if not isinstance(v, list) or not v:
        raise SweepError(f"sweep: '{key}' must be a non-empty list (got {v!r})")
    return v


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def load_sweep(path: Path, out_root: Path | None = None) -> list[Run]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise SweepError(f"sweep: file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"sweep: {path}: {e}") from None
    return expand(doc, path, out_root)


def expand(doc: dict, path: Path, out_root: Path | None = None) -> list[Run]:
    unknown = set(doc) - TOP_LEVEL_KEYS
    if unknown:
        raise SweepError(f"sweep: {path}: unknown top-level key(s) {sorted(unknown)}")
    name = doc.get("name", path.stem)
    config = None
    if "config" in doc:
        config = (path.parent / doc["config"]).resolve()
        if not config.is_file():
            raise SweepError(f"sweep: {path}: config file not found: {config}")
    if out_root is None:
        out_root = Path(doc.get("out_root", f"runs/sweeps/{name}"))

    strategies = as_list(doc, "strategies", [])
    precisions = [parse_precision(p) for p in as_list(doc, "precisions", ["fp32"])]
    partitions = [parse_partition(p) for p in as_list(doc, "partitions", ["iid"])]
    ranks_list = as_list(doc, "ranks", [4])
    seeds = as_list(doc, "seeds", [1])
    for r in ranks_list:
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise SweepError(f"sweep: ranks entry {r!r} must be a positive integer")
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise SweepError(f"sweep: seeds entry {s!r} must be a non-negative integer")

    fixed = flatten(doc.get("set", {}))
    per_strategy = {k: flatten(v) for k, v in doc.get("strategy", {}).items()}
    for k in per_strategy:
        if k not in strategies:
            raise SweepError(f"sweep: [strategy.{k}] given but '{k}' is not in strategies")
    for where, table in [("set", fixed)] + [(f"strategy.{k}", t) for k, t in per_strategy.items()]:
        for key, v in table.items():
            if key in AXIS_KEYS:
                raise SweepError(f"sweep: [{where}] sets '{key}', which a sweep axis sets")
            if isinstance(v, list) and where == "set":
                raise SweepError(f"sweep: [set] '{key}' is a list; lists expand only in [strategy.*]")
    for key, v in fixed.items():
        format_value(v)

    runs: list[Run] = []
    for strategy in strategies:
        if not isinstance(strategy, str) or not strategy:
            raise SweepError(f"sweep: strategy {strategy!r} must be a non-empty string")
        extra = per_strategy.get(strategy, {})
        extra_keys = sorted(extra)
        choices = [extra[k] if isinstance(extra[k], list) else [extra[k]] for k in extra_keys]
        for k, c in zip(extra_keys, choices):
            if not c:
                raise SweepError(f"sweep: [strategy.{strategy}] '{k}' is an empty list")
        varied = [k for k, v in zip(extra_keys, choices) if len(v) > 1]
        for combo in itertools.product(*choices):
            extras = dict(zip(extra_keys, combo))
            for (compute, wire), (partition, alpha), ranks, seed in itertools.product(
                    precisions, partitions, ranks_list, seeds):
                sets = dict(fixed)
                sets.update(extras)
                sets["sync.strategy"] = strategy
                sets["precision.compute"] = compute
                sets["precision.wire"] = wire
                sets["data.partition"] = partition
                if alpha is not None:
                    sets["data.alpha"] = alpha
                sets["train.seed"] = seed
                parts = [strategy + "".join(f"-{k.rsplit('.', 1)[-1]}{format_value(extras[k])}"
                                            for k in varied)]
                parts.append(compute if compute == wire else f"{compute}-{wire}")
                parts.append(partition + (format_value(alpha) if alpha is not None else ""))
                parts += [f"n{ranks}", f"s{seed}"]
                run_name = slug("-".join(parts))
                runs.append(Run(index=len(runs), name=run_name, ranks=ranks,
                                sets=[f"{k}={format_value(v)}" for k, v in sets.items()],
                                out=out_root / run_name, config=config,
                                meta={"strategy": strategy, "compute": compute, "wire": wire,
                                      "partition": partition, "alpha": alpha, "seed": seed,
                                      **extras}))
    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SweepError(f"sweep: duplicate runs (repeated list entries?): {dupes[0]}")
    return runs


RUN_STATES = ("done", "stopped", "partial", "todo")


def run_state(out: Path, expected_steps: int | None = None) -> str:
    """done | stopped | partial | todo. A run is done only when its summary.json parses, says it
    was not stopped early (the trainer also writes one when a signal or train.max_seconds stops
    it, with "stopped_early": true) and, when the sweep fixes train.steps, reached that step.
    stopped: such an early summary; partial: no usable summary but a checkpoint; todo: neither.
    Both stopped and partial resume from the latest checkpoint."""
    try:
        with open(out / "summary.json") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        summary = None
    if isinstance(summary, dict):
        steps = summary.get("steps")
        finished = summary.get("stopped_early") is False and (
            expected_steps is None or (isinstance(steps, int) and steps >= expected_steps))
        if finished:
            return "done"
        return "stopped"
    return "partial" if has_checkpoint(out) else "todo"


def expected_steps(run: "Run") -> int | None:
    for s in run.sets:
        key, _, value = s.partition("=")
        if key == "train.steps":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def is_complete(out: Path, run: "Run | None" = None) -> bool:
    return run_state(out, expected_steps(run) if run is not None else None) == "done"


def has_checkpoint(out: Path) -> bool:
    ckpt = out / "checkpoints"
    return ckpt.is_dir() and any(ckpt.iterdir())


def default_lowsync() -> str:
    return os.environ.get("LOWSYNC") or str(REPO_ROOT / "build" / "bin" / "lowsync")


def slurm_threads() -> int | None:
    """The CPUs Slurm gives each task (sbatch --cpus-per-task), or None outside such a job."""
    v = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(v) if v.isdigit() and int(v) > 0 else None


def launch_command(run: Run, lowsync: str, out: Path | None = None,
                   threads: int | None = None) -> list[str]:
    out = out if out is not None else run.out
    # A stopped or partial run resumes from its latest checkpoint (the trainer picks it from
    # <out>/checkpoints); only a run with nothing to resume from starts from step 0.
    resume = has_checkpoint(out) and not is_complete(out, run)
    # A run folder of this sweep's that holds files but no checkpoint (an attempt killed before
    # its first one) starts over: lowsync train refuses to reuse such a folder without --force.
    force = not resume and any((out / f).exists() for f in ("config.toml", "metrics.csv", "summary.json"))
    args = run.train_args(lowsync, out, resume=resume, force=force)
    if threads is not None and not any(s.startswith("train.threads=") for s in run.sets):
        # Each rank's oneDNN threads fill the CPUs of its Slurm task (not part of the run's
        # identity: a resume may run with another thread count).
        args[2:2] = ["--set", f"train.threads={threads}"]
    return ["bash", str(LAUNCH_SH), str(run.ranks)] + args


def array_spec(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8" (sbatch --array syntax)."""
    parts, start = [], None
    for i, v in enumerate(indices):
        if start is None:
            start = v
        if i + 1 == len(indices) or indices[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(parts)


def cmd_slurm_groups(runs: list[Run], include_done: bool) -> int:
    """One line per rank count: RANKS, the array indices of its runs, their number. Done runs
    are left out unless include_done (a resubmission then queues only what is left)."""
    groups: dict[int, list[int]] = {}
    for r in runs:
        if include_done or not is_complete(r.out, r):
            groups.setdefault(r.ranks, []).append(r.index)
    for ranks in sorted(groups):
        print(f"{ranks}\t{array_spec(groups[ranks])}\t{len(groups[ranks])}")
    return 0


def cmd_list(runs: list[Run], fmt: str) -> int:
    if fmt == "json":
        print(json.dumps([{"index": r.index, "name": r.name, "ranks": r.ranks, "sets": r.sets,
                           "out": str(r.out), "config": str(r.config) if r.config else None,
                           "complete": is_complete(r.out, r),
                           "state": run_state(r.out, expected_steps(r))} for r in runs], indent=2))
    elif fmt == "tsv":
        for r in runs:
            print(f"{r.index}\t{r.name}\t{r.ranks}\t{r.out}\t{' '.join(r.sets)}")
    else:
        width = max(len(r.name) for r in runs)
        for r in runs:
            state = run_state(r.out, expected_steps(r))
            print(f"{r.index:4d}  {r.name:<{width}}  n={r.ranks:<4d} {state:<7} {r.out}")
        print(f"{len(runs)} runs, {sum(is_complete(r.out, r) for r in runs)} complete")
    return 0


def cmd_run_local(runs: list[Run], lowsync: str, dry_run: bool, stop_on_error: bool) -> int:
    import subprocess

    failed, stopped, skipped, ok = [], [], [], []
    for r in runs:
        if is_complete(r.out, r):
            print(f"sweep: [{r.index}] {r.name}: complete, skipped", flush=True)
            skipped.append(r.name)
            continue
        cmd = launch_command(r, lowsync)
        print(f"sweep: [{r.index}] {r.name}: {shlex.join(cmd)}", flush=True)
        if dry_run:
            continue
        r.out.mkdir(parents=True, exist_ok=True)
        rc = subprocess.call(cmd)
        if rc == 0:
            ok.append(r.name)
        elif rc == 3:
            print(f"sweep: [{r.index}] {r.name}: stopped after a checkpoint (exit 3); rerun to resume",
                  flush=True)
            stopped.append(r.name)
        else:
            print(f"sweep: [{r.index}] {r.name}: failed with exit status {rc}", flush=True)
            failed.append(r.name)
        if (failed or stopped) and stop_on_error:
            break
    print(f"sweep: {len(ok)} ran, {len(skipped)} skipped (complete), {len(stopped)} stopped, "
          f"{len(failed)} failed", flush=True)
    return 1 if failed or stopped else 0


def cmd_run_index(runs: list[Run], index: int, lowsync: str, out: Path | None, dry_run: bool) -> int:
    if not 0 <= index < len(runs):
        raise SweepError(f"sweep: run index {index} out of range 0..{len(runs) - 1}")
    r = runs[index]
    out = out if out is not None else r.out
    state = run_state(out, expected_steps(r))
    if state == "done":
        print(f"sweep: [{index}] {r.name}: complete ({out}/summary.json), skipped", flush=True)
        return 0
    if state != "todo":
        where = f"resuming from {out}/checkpoints" if has_checkpoint(out) else "no checkpoint, starting over"
        print(f"sweep: [{index}] {r.name}: {state} ({where})", flush=True)
    allocated = os.environ.get("SLURM_NTASKS")
    if allocated and allocated.isdigit() and r.ranks != int(allocated):
        more = r.ranks > int(allocated)
        print(f"sweep: [{index}] {r.name}: {r.ranks} ranks, {allocated} allocated tasks; "
              + ("oversubscribing" if more else "the rest stay idle")
              + " (jobs/slurm/submit_sweep.sh submits one array per rank count)",
              file=sys.stderr, flush=True)
    cmd = launch_command(r, lowsync, out, threads=slurm_threads())
    print(f"sweep: [{index}] {r.name}: {shlex.join(cmd)}", flush=True)
    if dry_run:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    # exec, so the job script's signal goes straight to the launcher and the exit status is the
    # trainer's.
    os.execvp(cmd[0], cmd)
    return 1  # not reached


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("sweep", type=Path, help="sweep TOML file")
        p.add_argument("--out-root", type=Path, help="override the sweep's out_root")
        return p

    p = add("list", "print the runs")
    p.add_argument("--format", choices=["table", "tsv", "json"], default="table")
    p.add_argument("--state", choices=RUN_STATES, help="only the runs in this state")
    p = add("slurm-groups", "print RANKS<tab>ARRAY<tab>COUNT per rank count (one job array each)")
    p.add_argument("--all", action="store_true", help="include runs that are done")
    add("slurm-array-count", "print the number of runs (the job array size)")
    add("max-ranks", "print the largest rank count (the --ntasks a Slurm array needs)")
    for name in ("run-local", "run-index"):
        p = add(name, "run all incomplete runs in order with mpirun" if name == "run-local"
                else "run one run (a Slurm array task); exits with the trainer's status")
        if name == "run-index":
            p.add_argument("index", type=int)
            p.add_argument("--out", type=Path, help="output folder (default <out_root>/<run name>)")
        else:
            p.add_argument("--stop-on-error", action="store_true")
        p.add_argument("--lowsync", default=None, help="trainer binary (default $LOWSYNC or build/bin/lowsync)")
        p.add_argument("--dry-run", action="store_true", help="print the commands only")

    args = ap.parse_args(argv)
    try:
        runs = load_sweep(args.sweep, args.out_root)
        if not runs:
            raise SweepError(f"sweep: {args.sweep}: expands to no runs")
        if args.command == "list":
            if args.state:
                runs = [r for r in runs if run_state(r.out, expected_steps(r)) == args.state]
                if not runs:
                    return 0
            return cmd_list(runs, args.format)
        if args.command == "slurm-groups":
            return cmd_slurm_groups(runs, args.all)
        if args.command == "slurm-array-count":
            print(len(runs))
            return 0
        if args.command == "max-ranks":
            print(max(r.ranks for r in runs))
            return 0
        lowsync = args.lowsync or default_lowsync()
        if not args.dry_run and not os.access(lowsync, os.X_OK):
            raise SweepError(f"sweep: trainer not found or not executable: {lowsync} "
                             "(build it, or set LOWSYNC / --lowsync)")
        if args.command == "run-local":
            return cmd_run_local(runs, lowsync, args.dry_run, args.stop_on_error)
        return cmd_run_index(runs, args.index, lowsync, args.out, args.dry_run)
    except SweepError as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
