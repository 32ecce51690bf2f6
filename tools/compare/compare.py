#!/usr/bin/python3
"""Compares lowsync runs: reads RUN_DIR... (a sweep's output folder stands for the runs inside it)
and writes DIR/report.md, DIR/table.csv (one row per run, unformatted) and PNG figures.
`lowsync compare` calls this script. ALGORITHMS.md section 9 is the protocol:
- runs are grouped by local optimizer; in each group `none` is the floor and every-step fp32
  `allreduce` the ceiling, and the target closes 90% of the gap between them (accuracy, or
  validation loss for the gpt workload);
- runs that differ only in the seed form one setting, reported as mean [min-max];
- each strategy is represented by its best setting (most seeds, then best mean quality) and
  ranked by bytes per rank to the target, only against rows of its own group;
- diverged (non-finite loss, or a loss 10x its first value), stopped and partial runs are
  labelled and never ranked and never move a target.

usage: compare.py RUN_DIR... --out DIR [--metric auto|accuracy|loss] [--target Q | --target-acc A]
                  [--calibration FILE] [--no-plots]
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
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import calibration as calibration_check  # noqa: E402
import netmodel  # noqa: E402
from runs import RunData, RunError, assign_labels, discover, fmt_bytes  # noqa: E402

GAP_FRACTION = 0.9
FIGURES = {
    "overview.png": "the quality of each strategy's best setting against bytes sent (seed mean, "
                    "min-max band; floor, ceiling and target as lines), and bytes per rank to the "
                    "target by strategy, per optimizer",
    "frontier.png": "final quality against total bytes per rank for every run: each strategy's "
                    "knob sweep as a curve, the Pareto frontier over all ranked runs in black",
    "quality_vs_steps.png": "quality against steps (best settings, seed mean and min-max)",
    "quality_vs_time.png": "quality against wall time measured here (best settings)",
    "loss.png": "training loss of the best settings (seed mean)",
    "bytes_per_step.png": "bytes sent per rank per step, one bar per setting",
    "modeled_time_to_target.png": "MODELED: time to target at 64, 256, 1024 ranks per link",
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
    if s >= 0.1:
        return f"{s:.3g} s"
    return f"{s * 1e3:.3g} ms"


def fmt_gbps(g) -> str:
    return f"{g:.3g} Gb/s" if g >= 0.1 else f"{g * 1e3:.3g} Mb/s"


# --- the analysis ---------------------------------------------------------------------------------
@dataclass
class Setting:
    """Runs that differ only in the seed."""
    runs: list[RunData]
    metric: str
    label: str = ""
    group: str = ""
    target: float | None = None

    @property
    def first(self) -> RunData:
        return self.runs[0]

    @property
    def family(self) -> str:
        """The strategy row a setting belongs to; a low-precision allreduce is its own row."""
        r = self.first
        if r.strategy == "allreduce" and r.precision_wire != "fp32":
            return "allreduce (low-precision wire)"
        return r.strategy

    @property
    def ok(self) -> list[RunData]:
        return [r for r in self.runs if r.status == "ok"]

    @property
    def status(self) -> str:
        bad = [r.status for r in self.runs if r.status != "ok"]
        if not bad:
            return "ok"
        if len(bad) == len(self.runs):
            return bad[0]
        return f"{len(bad)} of {len(self.runs)} seeds {'/'.join(sorted(set(bad)))}"

    @property
    def ranked(self) -> bool:
        return self.status == "ok" and self.mean_quality is not None

    def qualities(self) -> list[float]:
        return [q for q in (r.final_quality(self.metric) for r in self.ok) if q is not None]

    @property
    def mean_quality(self) -> float | None:
        q = self.qualities()
        return statistics.fmean(q) if q else None

    def better(self, a: float, b: float) -> bool:
        return a > b if self.metric == "accuracy" else a < b

    def to_target(self, what: str) -> list[float | None]:
        """Per ok seed: steps, bytes or time at the first evaluation reaching the target."""
        if self.target is None:
            return [None] * len(self.ok)
        fn = {"steps": RunData.steps_to_target, "bytes": RunData.bytes_to_target,
              "time": RunData.time_to_target}[what]
        return [fn(r, self.target, self.metric) for r in self.ok]

    def reached(self) -> tuple[int, int]:
        steps = self.to_target("steps")
        return sum(s is not None for s in steps), len(self.runs)

    def mean_to_target(self, what: str) -> float | None:
        """Mean over seeds, only when every seed reached the target (else None)."""
        vals = self.to_target(what)
        if not vals or any(v is None for v in vals) or len(self.ok) < len(self.runs):
            return None
        return statistics.fmean(vals)

    def spread(self, vals: list[float | None]) -> tuple[float, float] | None:
        v = [x for x in vals if x is not None]
        return (min(v), max(v)) if v else None

    @property
    def total_bytes(self) -> float | None:
        v = [r.total_bytes for r in self.runs if r.total_bytes is not None]
        return statistics.fmean(v) if v else None


@dataclass
class Group:
    """Rows that share a local optimizer, with their floor, ceiling and target."""
    name: str
    metric: str
    settings: list[Setting] = field(default_factory=list)
    floor: Setting | None = None
    ceiling: Setting | None = None
    target: float | None = None
    note: str = ""


def best_of(settings: list[Setting], metric: str) -> Setting | None:
    """Most seeds first, then the best mean quality; unranked settings only if nothing else."""
    ranked = [s for s in settings if s.ranked]
    pool = ranked or settings
    if not pool:
        return None
    sign = 1 if metric == "accuracy" else -1
    return max(pool, key=lambda s: (len(s.ok), sign * (s.mean_quality if s.mean_quality is not None
                                                       else -sign * math.inf)))


def build_settings(runs: list[RunData], metric: str) -> list[Setting]:
    by_key: dict[tuple, list[RunData]] = {}
    for r in runs:
        by_key.setdefault(r.setting_key(), []).append(r)
    out = []
    for group in by_key.values():
        group.sort(key=lambda r: (r.seed if r.seed is not None else 0, str(r.path)))
        s = Setting(group, metric)
        s.label = group[0].label.split(" seed=")[0] if len(group) > 1 else group[0].label
        if len(group) > 1:
            s.label = f"{s.label} ({len(group)} seeds)"
        out.append(s)
    return out


def build_groups(settings: list[Setting], metric: str, fixed_target: float | None) -> list[Group]:
    opts = sorted({s.first.optimizer for s in settings})
    groups: dict[str, Group] = {o: Group(o, metric) for o in opts if o != "demo"}
    for g in groups.values():
        g.floor = best_of([s for s in settings if s.first.optimizer == g.name and s.family == "none"], metric)
        g.ceiling = best_of([s for s in settings if s.first.optimizer == g.name and s.family == "allreduce"
                             and s.first.precision_compute == "fp32"], metric)
    for s in settings:
        o = s.first.optimizer
        if o == "demo":
            # DeMo is its own optimizer; its paper's baseline is AdamW with allreduce.
            ref = "adamw" if "adamw" in groups else ("sgd" if "sgd" in groups else None)
            if ref is None:
                groups.setdefault("demo", Group("demo", metric))
                ref = "demo"
            groups[ref].settings.append(s)
        else:
            groups[o].settings.append(s)
    for g in groups.values():
        if any(s.first.optimizer == "demo" for s in g.settings) and g.name != "demo":
            g.note = (f"DeMo runs its own optimizer (the sign of a decoupled, DCT-compressed momentum), "
                      f"not {g.name}: it is bounded here by the {g.name} floor and ceiling, as the DeMo "
                      f"paper bounds it by AdamW with allreduce. Its rank in this table compares "
                      f"different optimizers.")
        if fixed_target is not None:
            g.target = fixed_target
        elif g.floor is not None and g.ceiling is not None and g.floor.ranked and g.ceiling.ranked:
            f, c = g.floor.mean_quality, g.ceiling.mean_quality
            if (c > f) if metric == "accuracy" else (c < f):
                g.target = f + GAP_FRACTION * (c - f)
            else:
                g.note += (" The ceiling (allreduce) is not better than the floor (none) here, so "
                           "there is no gap to close and no target.")
        for s in g.settings:
            s.group, s.target = g.name, g.target
    return [g for g in groups.values() if g.settings]


def representatives(g: Group) -> list[Setting]:
    """One setting per strategy row (floor and ceiling included), ranked: every seed reached the
    target with the fewest mean bytes first; then the others by quality; unranked last."""
    fams: dict[str, list[Setting]] = {}
    for s in g.settings:
        fams.setdefault(s.family, []).append(s)
    reps = []
    for fam, ss in fams.items():
        if fam == "none" and g.floor is not None:
            reps.append(g.floor)
        elif fam == "allreduce" and g.ceiling is not None:
            reps.append(g.ceiling)
        else:
            reps.append(best_of(ss, g.metric))
    sign = 1 if g.metric == "accuracy" else -1

    def key(s: Setting):
        b = s.mean_to_target("bytes")
        q = s.mean_quality
        return (0 if s.ranked else 1, 0 if b is not None else 1, b if b is not None else 0,
                -sign * q if q is not None else math.inf)
    return sorted(reps, key=key)


def fewest_bytes_setting(g: Group, fam: str) -> tuple[Setting, float] | None:
    """Over a strategy's whole sweep: the ranked setting whose every seed reached the target with
    the fewest mean bytes."""
    best = None
    for s in g.settings:
        if s.family != fam or not s.ranked:
            continue
        b = s.mean_to_target("bytes")
        if b is not None and (best is None or b < best[1]):
            best = (s, b)
    return best


def pareto(runs: list[RunData], metric: str) -> list[RunData]:
    """Ranked runs no other ranked run beats on both total bytes (fewer or equal) and final
    quality (better or equal, one of them strictly)."""
    pts = [r for r in runs if r.status == "ok" and r.final_quality(metric) is not None
           and r.total_bytes is not None]
    sign = 1 if metric == "accuracy" else -1
    pts.sort(key=lambda r: (r.total_bytes, -sign * r.final_quality(metric)))
    out, best = [], -math.inf
    for r in pts:
        q = sign * r.final_quality(metric)
        if q > best:
            out.append(r)
            best = q
    return out


# --- the report -----------------------------------------------------------------------------------
def qfmt(v, metric: str) -> str:
    if v is None:
        return "n/a"
    return f"{v:.2%}" if metric == "accuracy" else f"{v:.4f}"


def qrange(s: Setting) -> str:
    q = s.qualities()
    if not q:
        return "n/a"
    m = s.metric
    if len(q) == 1:
        return qfmt(q[0], m)
    return f"{qfmt(statistics.fmean(q), m)} [{qfmt(min(q), m)}–{qfmt(max(q), m)}]"


def bytes_range(s: Setting) -> str:
    mean = s.mean_to_target("bytes")
    k, n = s.reached()
    if mean is None:
        return "not reached" if k == 0 else f"{k}/{n} seeds reached"
    sp = s.spread(s.to_target("bytes"))
    if len(s.ok) > 1 and sp is not None and sp[0] != sp[1]:
        return f"{fmt_bytes(mean)} [{fmt_bytes(sp[0])}–{fmt_bytes(sp[1])}]"
    return fmt_bytes(mean)


def group_section(g: Group, metric_name: str) -> list[str]:
    m = g.metric
    out = [f"## Optimizer: {g.name}", ""]
    fl = f"`none` {qfmt(g.floor.mean_quality, m)} ({g.floor.label})" if g.floor else "no `none` run"
    ce = f"`allreduce` {qfmt(g.ceiling.mean_quality, m)} ({g.ceiling.label})" if g.ceiling else "no fp32 `allreduce` run"
    out.append(f"Floor: {fl}. Ceiling: {ce}.")
    if g.target is not None:
        out.append(f"**Target: {metric_name} {qfmt(g.target, m)}** (90% of the gap from floor to ceiling"
                   f"{', fixed by --target' if g.floor is None or g.ceiling is None else ''}).")
    else:
        out.append("**No target**: the group needs ranked `none` and `allreduce` rows (or pass --target).")
    if g.note:
        out += ["", g.note.strip()]
    reps = representatives(g)
    ceiling_bytes = g.ceiling.mean_to_target("bytes") if g.ceiling else None
    out += ["", f"Each strategy's best setting (most seeds, then best mean {metric_name}); seeds as "
            "mean [min–max]; ranked by mean bytes per rank to the target, only within this optimizer.", "",
            "| # | Strategy | Best setting | Seeds | Final " + metric_name + " | Bytes/rank to target | "
            "Time to target (here) | vs allreduce bytes | Fewest bytes to target in its sweep | Status |",
            "|---:|---|---|---:|---:|---:|---:|---:|---|---|"]
    rank = 0
    for s in reps:
        b = s.mean_to_target("bytes")
        ranked = s.ranked and b is not None
        if ranked:
            rank += 1
        ratio = (f"{ceiling_bytes / b:.1f}x fewer" if b and ceiling_bytes and s is not g.ceiling
                 else ("0 B" if b == 0 and s is not g.ceiling else ("1.0x" if s is g.ceiling and b else "")))
        few = fewest_bytes_setting(g, s.family)
        few_txt = f"{fmt_bytes(few[1])} ({few[0].label})" if few and few[0] is not s else ("this one" if few else "none reached")
        role = " (floor)" if s is g.floor else (" (ceiling)" if s is g.ceiling else "")
        cells = [str(rank) if ranked else "–", s.family + role, s.label, str(len(s.runs)), qrange(s),
                 bytes_range(s), fmt_seconds(s.mean_to_target("time")), ratio, few_txt, s.status]
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    winners = [s for s in reps if s.ranked and s.mean_to_target("bytes") is not None
               and s is not g.ceiling]
    out.append("")
    if winners and g.ceiling is not None and g.ceiling.mean_to_target("bytes"):
        w = winners[0]
        wb = w.mean_to_target("bytes")
        line = f"**Fewest bytes to target ({g.name}):** {w.label}: {fmt_bytes(wb)} per rank"
        if wb > 0:
            line += f", {g.ceiling.mean_to_target('bytes') / wb:.1f}x fewer than {g.ceiling.label}"
        out.append(line + ".")
    elif g.target is not None:
        out.append(f"No strategy other than the ceiling reached the target with every seed ({g.name}).")
    return out + [""]


def run_rows(runs: list[RunData], settings: list[Setting], metric: str) -> list[dict]:
    target_of = {id(r): s.target for s in settings for r in s.runs}
    group_of = {id(r): s.group for s in settings for r in s.runs}
    rows = []
    for r in runs:
        t = target_of.get(id(r))
        ok = r.status == "ok" and t is not None
        hit = r.target_row(t, metric) if ok else None
        knob = r.knob
        rows.append({
            "run": r.label, "dir": str(r.path), "status": r.status, "group": group_of.get(id(r), ""),
            "strategy": r.strategy, "knob": f"{knob[0]}={knob[1]}" if knob else "", "lr": r.lr,
            "optimizer": r.optimizer, "precision": r.precision, "partition": r.partition,
            "ranks": r.ranks, "seed": r.seed, "metric": metric, "target": t,
            "final_quality": r.final_quality(metric), "final_acc": r.final_accuracy,
            "final_test_loss": r.final_test_loss,
            "time_to_target_s": hit.get("wall_s") if hit else None,
            "bytes_to_target": hit.get("bytes_sent") if hit else None,
            "steps_to_target": hit["step"] if hit else None,
            "reached": hit is not None, "total_bytes": r.total_bytes, "syncs": r.syncs,
            "samples_per_s": r.samples_per_s, "wall_s": r.wall_s, "peak_rss_bytes": r.peak_rss,
            "train_state_bytes": r.train_state, "bytes_per_step": r.bytes_per_step,
            "compute_s_per_step": r.compute_s_per_step,
        })
    return rows


def runs_table(rows: list[dict], metric: str) -> list[str]:
    out = ["| Run | Status | Final " + metric + " | Bytes/rank to target | Time to target | Total bytes/rank | "
           "Syncs | Samples/s | Wall |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        reach = (fmt_bytes(r["bytes_to_target"]) if r["reached"] else
                 ("not reached" if r["status"] == "ok" and r["target"] is not None else "–"))
        cells = [r["run"], r["status"], qfmt(r["final_quality"], metric), reach,
                 fmt_seconds(r["time_to_target_s"]) if r["reached"] else "–",
                 fmt_bytes(r["total_bytes"]), fmt(r["syncs"], ".0f"), fmt(r["samples_per_s"], ",.0f"),
                 fmt_seconds(r["wall_s"])]
        out.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return out


def modeled_section(groups: list[Group], links: list) -> list[str]:
    ns = netmodel.PROJECTED_RANKS
    out = [
        "## Modeled at scale (alpha-beta model, not measured)", "",
        "Each strategy's best setting, projected to rank counts we did not run. Per step: the run's "
        "**measured** compute seconds plus **modeled** communication of its measured calls and payloads "
        "(summary.json ledger). Each allreduce and allgather uses the algorithm Open MPI 4.1's tuned "
        "component picks for that message size and rank count (recursive doubling for small "
        "messages, Rabenseifner for large ones; tools/compare/netmodel.py lists the thresholds, "
        "copied from coll_tuned_decision_fixed.c). The allreduce baseline is modeled as DDP runs it: "
        "gradient buckets (1 MiB, then 25 MiB) allreduced while backward (2/3 of the measured "
        "compute) continues, step = forward + max(backward, bucket pipeline); other strategies "
        "communicate after their step. **The steps to reach the target are assumed to stay as "
        "measured** at the run's own rank count (seed mean); in reality they change with the global "
        "batch and the data split. Congestion and stragglers are not modeled.", ""]
    for g in groups:
        reps = [s for s in representatives(g) if s.ranked]
        if not reps:
            continue
        out += [f"### Optimizer {g.name}: bytes per rank to target (modeled wire bytes)", "",
                "| Strategy | Steps to target | Measured here | " + " | ".join(f"{n} ranks" for n in ns) + " |",
                "|---|---:|---:|" + "---:|" * len(ns)]
        skipped = []
        for s in reps:
            steps = s.mean_to_target("steps")
            p, why = netmodel.project(s.first, steps, links[0])
            if p is None:
                skipped.append(f"{s.label} ({why})")
                continue
            out.append(f"| {s.label} | {steps:.0f} | {fmt_bytes(s.mean_to_target('bytes'))} | "
                       + " | ".join(fmt_bytes(p.bytes_to_target[n]) for n in ns) + " |")
        if skipped:
            out += ["", "Not projected: " + "; ".join(skipped)]
        out.append("")
        for link in links:
            out += [f"**{g.name}, time to target, {link.name}** (alpha = {link.alpha_s * 1e6:.3g} us, "
                    f"beta = {link.beta_Bps * 8 / 1e9:.3g} Gb/s)", "",
                    "| Strategy | " + " | ".join(f"{n} ranks" for n in ns) + " |", "|---|" + "---:|" * len(ns)]
            for s in reps:
                p, _ = netmodel.project(s.first, s.mean_to_target("steps"), link)
                if p is not None:
                    out.append(f"| {s.label} | " + " | ".join(fmt_seconds(p.time_to_target_s[n]) for n in ns) + " |")
            out.append("")
        if g.ceiling is not None and g.ceiling.ranked and g.ceiling.mean_to_target("steps") is not None:
            alpha = netmodel.PRESETS[1].alpha_s
            out += [f"**{g.name}: compression pays below X Gb/s** — the link bandwidth below which the "
                    f"strategy reaches the target sooner than the allreduce ceiling ({g.ceiling.label}, "
                    f"overlapped), at latency alpha = {alpha * 1e6:g} us:", "",
                    "| Strategy | " + " | ".join(f"{n} ranks" for n in ns) + " |", "|---|" + "---:|" * len(ns)]
            for s in reps:
                if s is g.ceiling or s is g.floor or s.mean_to_target("steps") is None:
                    continue
                cells = []
                for n in ns:
                    kind, x = netmodel.breakeven_gbps(s.first, s.mean_to_target("steps"), g.ceiling.first,
                                                      g.ceiling.mean_to_target("steps"), n, alpha)
                    cells.append({"below": f"below {fmt_gbps(x)}" if x is not None else "",
                                  "always": "always (0.01–10,000 Gb/s)",
                                  "never": "never", "n/a": "n/a"}[kind])
                out.append(f"| {s.label} | " + " | ".join(cells) + " |")
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
        for d in (p.parent, p, p.parent.parent):
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


def choose_metric(runs: list[RunData], wanted: str) -> str:
    if wanted != "auto":
        return wanted
    # The gpt workload is judged by validation loss (bits per byte follow it); the classifiers by
    # accuracy.
    if any(r.arch == "gpt" or "final_val_loss" in r.summary for r in runs):
        return "loss"
    return "accuracy"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Compare lowsync runs: report.md, table.csv, PNG plots.")
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--out", required=True, type=Path, help="output folder for the report")
    ap.add_argument("--metric", choices=("auto", "accuracy", "loss"), default="auto",
                    help="quality: test accuracy (higher is better) or test/validation loss (lower); "
                         "auto: loss for the gpt workload, else accuracy")
    ap.add_argument("--target", type=float, default=None,
                    help="a fixed target quality for every optimizer group instead of 90%% of the "
                         "gap between none and allreduce")
    ap.add_argument("--target-acc", type=float, default=None,
                    help="a fixed target test accuracy (a fraction; 85 means 85%%); implies --metric accuracy")
    ap.add_argument("--calibration", type=Path, metavar="FILE",
                    help="bench_comm --json output: the link measured here (default: a "
                         "calibration.json in a run folder's parent)")
    ap.add_argument("--no-plots", action="store_true", help="write report.md and table.csv only")
    args = ap.parse_args(argv)
    fixed = args.target
    if args.target_acc is not None:
        if args.target is not None:
            print("compare: give --target or --target-acc, not both", file=sys.stderr)
            return 2
        fixed = args.target_acc / 100 if args.target_acc > 1 else args.target_acc
        if not 0 < fixed <= 1:
            print(f"compare: --target-acc must be in (0, 1] or a percent, got {args.target_acc}",
                  file=sys.stderr)
            return 2
        args.metric = "accuracy"
    if fixed is not None and not math.isfinite(fixed):
        print(f"compare: --target must be a finite number, got {fixed}", file=sys.stderr)
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
        paths, partial_paths, warnings = discover(args.runs)
        runs = [RunData.load(p) for p in paths] + [RunData.load(p, allow_partial=True) for p in partial_paths]
    except RunError as e:
        print(f"compare: {e}", file=sys.stderr)
        return 1
    for w in warnings:
        print(f"compare: warning: {w}", file=sys.stderr)
    if not runs:
        print("compare: no runs found", file=sys.stderr)
        return 1
    assign_labels(runs)
    metric = choose_metric(runs, args.metric)
    metric_name = "test accuracy" if metric == "accuracy" else "validation loss"
    settings = build_settings(runs, metric)
    groups = build_groups(settings, metric, fixed)
    rows = run_rows(runs, settings, metric)
    rows.sort(key=lambda r: (r["group"], r["status"] != "ok", r["strategy"], r["knob"], r["lr"] or 0, r["seed"] or 0))

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

    first = runs[0]
    statuses = {}
    for r in runs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    md = [f"# lowsync comparison: {len(runs)} runs, {len(settings)} settings",
          "",
          f"Workload {first.arch}, partition {first.partition}, {first.ranks} ranks, {first.steps} steps"
          f" (of the first run); quality = final {metric_name}"
          f" ({'higher' if metric == 'accuracy' else 'lower'} is better). Runs: "
          + ", ".join(f"{v} {k}" for k, v in sorted(statuses.items())) + ". "
          "Diverged (non-finite loss, or a training loss 10x its first value), stopped and partial "
          "runs are labelled and never ranked. Bytes are wire bytes sent per rank, cumulative, read "
          "at the first evaluation that reaches the target (so they depend on eval.every); time is "
          "wall time measured on this machine. Labels: strategy(knob) lr precision optimizer.", ""]
    if len(groups) > 1:
        md += [f"Rows are ranked only within their optimizer group ({', '.join(g.name for g in groups)}): "
               "different local optimizers are never ranked against each other.", ""]
    for g in groups:
        md += group_section(g, metric_name)
    if plots is not None:
        plots.overview(groups, settings, metric, args.out / "overview.png")
        plots.frontier(runs, groups, settings, pareto(runs, metric), metric, args.out / "frontier.png")
        plots.quality_vs(groups, metric, "step", "step", args.out / "quality_vs_steps.png")
        plots.quality_vs(groups, metric, "wall_s", "wall time measured here (s)", args.out / "quality_vs_time.png")
        plots.loss_curves(groups, args.out / "loss.png")
        plots.bytes_per_step(settings, args.out / "bytes_per_step.png")
        plots.modeled(groups, links, args.out / "modeled_time_to_target.png")
        if checks:
            plots.model_check(checks, measured, args.out / "model_check.png")
        md += ["## Figures", ""]
        md += [f"- [{name}]({name}): {what}" for name, what in FIGURES.items()
               if name != "model_check.png" or checks]
        md += ["", "![overview](overview.png)", "", "![frontier](frontier.png)", ""]
    front = pareto(runs, metric)
    md += ["## Pareto frontier (all ranked runs; final quality vs total bytes per rank)", "",
           "Runs that no other run beats on both: " + "; ".join(
               f"{r.label} ({qfmt(r.final_quality(metric), metric)}, {fmt_bytes(r.total_bytes)})" for r in front)
           + (". The frontier mixes optimizers; each label names its own." if len(groups) > 1 else "."), ""]
    md += ["## All runs", "", *runs_table(rows, metric), ""]
    md += modeled_section(groups, links)
    md += model_check_section(checks, measured)
    if calibration is not None:  # per-step measured vs modeled comm, time-to-target order (issue 21)
        # Time to target on the link: the group's target; without a floor and ceiling, the
        # accuracy every run reached (so the ranking covers all of them).
        reached = [r.final_accuracy for r in runs if r.final_accuracy is not None]
        cal_target = next((g.target for g in groups if g.target is not None and metric == "accuracy"),
                          min(reached) if reached else None)
        if cal_target is not None:
            md += calibration_check.section(runs, calibration, cal_target)
    md += ["## Run folders", ""] + [f"- {r.label}: `{r.path}`" + (
        "" if r.final_quality(metric) is not None else f" (no finite {metric_name})") for r in runs] + [""]
    (args.out / "report.md").write_text("\n".join(md))
    write_csv(rows, args.out / "table.csv")
    print(f"compare: {len(runs)} runs -> {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
