"""PNG figures of a comparison (matplotlib, Agg backend, no display needed). A strategy keeps one
colour in every figure. Bytes axes are log base 2 with one tick format ("8 MiB", "32 MiB"); a run
that sends no bytes is drawn at a "0 B" position left of the smallest positive value, never at
log(0). Legends sit outside the axes, so they cover no data. Runs that are not ranked (diverged,
stopped, partial) are grey and marked x. Every figure is at most 4000 px a side (MAX_PIXELS).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator  # noqa: E402

import netmodel  # noqa: E402
from runs import RunData, fmt_bytes  # noqa: E402

FAMILY_COLORS = {"allreduce": "tab:blue", "periodic": "tab:orange", "fda": "tab:green",
                 "demo": "tab:red", "none": "tab:gray", "diloco": "tab:purple",
                 "powersgd": "tab:brown", "allreduce (low-precision wire)": "tab:cyan"}
SPARE_COLORS = ["tab:pink", "tab:olive", "gold", "navy", "teal"]
UNRANKED = "0.6"
DPI = 100
MAX_PIXELS = 4000
MAX_LEGEND = 24


# One marker per local optimizer: the same strategy under SGD and AdamW (none, allreduce) shares
# its color, so the marker tells the two apart.
OPTIMIZER_MARKERS = {"sgd": "o", "adamw": "s", "demo": "^", "zo": "D"}


def marker(optimizer: str) -> str:
    return OPTIMIZER_MARKERS.get(optimizer, "v")


def color(family: str) -> str:
    if family not in FAMILY_COLORS:
        FAMILY_COLORS[family] = SPARE_COLORS[len(FAMILY_COLORS) % len(SPARE_COLORS)]
    return FAMILY_COLORS[family]


def short_bytes(v: float) -> str:
    """Tick labels: 3 significant digits, no trailing zeros ("8 MiB", "32 MiB", "1.5 KiB")."""
    if v <= 0:
        return "0 B"
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    i = 0
    while v >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    return f"{v:.3g} {units[i]}"


def _save(fig, path: Path) -> None:
    # bbox "tight" grows the canvas to fit every artist; an artist placed far outside (a label at
    # log 0) once made a 59,944 px image. Clamp the figure so the saved PNG stays bounded.
    w, h = fig.get_size_inches()
    scale = min(1.0, (MAX_PIXELS * 0.8) / (max(w, h) * DPI))
    if scale < 1.0:
        fig.set_size_inches(w * scale, h * scale)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)


def _legend(ax, handles=None, labels=None) -> None:
    h, lab = ax.get_legend_handles_labels() if handles is None else (handles, labels)
    if not h:
        return
    if len(h) > MAX_LEGEND:
        h, lab = h[:MAX_LEGEND], lab[:MAX_LEGEND - 1] + [f"... {len(lab) - MAX_LEGEND + 1} more in report.md"]
    ax.legend(h, lab, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


class BytesAxis:
    """A log-2 bytes axis that also shows zero: 0 is drawn at zero_pos, a quarter of the smallest
    positive value (or 256 B when nothing is positive), labelled "0 B"."""

    def __init__(self, values):
        pos = [v for v in values if v is not None and math.isfinite(v) and v > 0]
        self.lo = min(pos) if pos else 1024.0
        self.hi = max(pos) if pos else 1024.0
        self.zero_pos = self.lo / 4 if pos else 256.0
        self.has_zero = any(v is not None and v == 0 for v in values)

    def x(self, v):
        if v is None or not math.isfinite(v):
            return None
        return self.zero_pos if v <= 0 else v

    def apply(self, ax, axis: str = "x") -> None:
        lo = self.zero_pos / 1.6 if self.has_zero else self.lo / 1.6
        hi = self.hi * 1.6
        if axis == "x":
            ax.set_xscale("log", base=2)
            ax.set_xlim(lo, hi)
        else:
            ax.set_yscale("log", base=2)
            ax.set_ylim(lo, hi)
        a = ax.xaxis if axis == "x" else ax.yaxis
        e0 = math.ceil(math.log2(self.lo / 1.5 if not self.has_zero else self.zero_pos * 1.5))
        e1 = math.floor(math.log2(hi))
        stride = max(1, math.ceil((e1 - e0 + 1) / 7))
        ticks = [2.0 ** e for e in range(e0, e1 + 1) if (e - e0) % stride == 0]
        if self.has_zero:
            ticks = [self.zero_pos] + [t for t in ticks if t > self.zero_pos * 1.9]
        a.set_major_locator(FixedLocator(ticks))
        a.set_major_formatter(FuncFormatter(
            lambda v, _: "0 B" if self.has_zero and math.isclose(v, self.zero_pos) else short_bytes(v)))
        a.set_minor_locator(NullLocator())
        a.set_minor_formatter(NullFormatter())


def _seed_curves(s, x: str, metric: str):
    """(xs, mean, lo, hi) over the evaluation steps every ok seed has; x averaged over seeds."""
    col = "test_acc" if metric == "accuracy" else "test_loss"
    per_seed = []
    for r in s.ok:
        d = {}
        for row in r.rows:
            q = r.quality(row, metric) if row.get(col) is not None else None
            if q is not None and row.get(x) is not None:
                d[row["step"]] = (row[x], q)
        per_seed.append(d)
    if not per_seed:
        return [], [], [], []
    steps = sorted(set.intersection(*(set(d) for d in per_seed)))
    xs = [statistics.fmean(d[k][0] for d in per_seed) for k in steps]
    qs = [[d[k][1] for d in per_seed] for k in steps]
    return xs, [statistics.fmean(q) for q in qs], [min(q) for q in qs], [max(q) for q in qs]


def _reference_lines(ax, g, metric: str) -> None:
    if g.floor is not None and g.floor.mean_quality is not None:
        ax.axhline(g.floor.mean_quality, color="tab:gray", linewidth=1.0, linestyle="--")
        # Inside the axes, at the right end: outside it, a legend placed right of the axes hid it.
        ax.text(0.99, g.floor.mean_quality, f"floor (none, {g.name})", transform=ax.get_yaxis_transform(),
                fontsize=7, va="bottom", ha="right", color="tab:gray")
    if g.ceiling is not None and g.ceiling.mean_quality is not None:
        ax.axhline(g.ceiling.mean_quality, color="tab:blue", linewidth=1.0, linestyle="--")
    if g.target is not None:
        ax.axhline(g.target, color="black", linewidth=0.9, linestyle=":")


def _reference_labels(ax, groups, metric: str) -> None:
    """Labels of the ceiling and target lines at the left end (the right end holds the allreduce
    runs themselves), called once the y limits are final: with two optimizer groups four lines can
    lie within a few points of each other, so the labels are stacked at least one text line apart,
    each at or above its own line, in the line's colour."""
    labels = []
    for g in groups:
        if g.ceiling is not None and g.ceiling.mean_quality is not None:
            labels.append((g.ceiling.mean_quality, f"ceiling (allreduce, {g.name})", "tab:blue"))
        if g.target is not None:
            labels.append((g.target, f"target {_q(g.target, metric)} ({g.name})", "black"))
    y0, y1 = ax.get_ylim()
    if not labels or not y1 > y0:
        return
    # One line of 7-point text, as a share of the axes height (before the final layout: a little
    # more than the line, so that the layout's small changes do not make them touch).
    fig = ax.get_figure()
    fig.canvas.draw_idle()
    height_pt = ax.get_window_extent().height * 72.0 / fig.dpi
    gap = 2.0 * 7.0 / height_pt if height_pt > 0 else 0.035
    last = -1.0
    for y, text, c in sorted(labels):
        pos = max((y - y0) / (y1 - y0) + 0.004, last + gap)
        last = pos
        ax.text(0.01, pos, text, transform=ax.transAxes, fontsize=7, va="bottom", ha="left", color=c)


def _q(v, metric: str) -> str:
    return f"{v:.1%}" if metric == "accuracy" else f"{v:.3f}"


def _ylabel(metric: str) -> str:
    return "test accuracy" if metric == "accuracy" else "validation loss (lower is better)"


def overview(groups, settings, metric: str, path: Path) -> None:
    """Left: quality vs bytes of each group's best settings. Right: bytes to target bars."""
    from compare import representatives  # noqa: PLC0415  (compare imports this module)
    reps = [(g, s) for g in groups for s in representatives(g)]
    all_x = []
    for _, s in reps:
        for r in s.ok:
            all_x += [row.get("bytes_sent") for row in r.rows]
    all_x += [s.mean_to_target("bytes") for _, s in reps]
    axis = BytesAxis(all_x)
    n = len(reps)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, max(5.0, 0.3 * n + 2.5)),
                                   gridspec_kw={"width_ratios": [1.1, 1]}, layout="constrained")
    for g, s in reps:
        c = color(s.family) if s.ranked else UNRANKED
        xs, mean, lo, hi = _seed_curves(s, "bytes_sent", metric)
        xs = [axis.x(v) for v in xs]
        ls = "-" if g is groups[0] else "--"
        ax1.plot(xs, mean, color=c, linestyle=ls, marker="o", markersize=3,
                 label=f"{s.label}" + ("" if s.ranked else f" [{s.status}]"))
        if len(s.ok) > 1:
            ax1.fill_between(xs, lo, hi, color=c, alpha=0.15, linewidth=0)
        b = s.mean_to_target("bytes")
        if b is not None and s.ranked:
            ax1.plot([axis.x(b)], [s.target], marker="*", markersize=12, color=c, markeredgecolor="black",
                     linestyle="none")
    for g in groups:
        _reference_lines(ax1, g, metric)
    _reference_labels(ax1, groups, metric)
    axis.apply(ax1, "x")
    ax1.set_xlabel("bytes sent per rank (log)" + ("; 0 B at the left" if axis.has_zero else ""))
    ax1.set_ylabel(_ylabel(metric))
    ax1.set_title("best setting per strategy: seed mean, min-max band (star: target reached)", fontsize=10)
    ax1.grid(True, which="major", alpha=0.3)
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)

    # Bars: per group, fewest bytes first; not reached hatched at the run's total bytes.
    labels, y = [], 0
    bar_axis = BytesAxis([s.mean_to_target("bytes") if s.mean_to_target("bytes") is not None else s.total_bytes
                          for _, s in reps])
    for g in groups:
        for s in representatives(g):
            b = s.mean_to_target("bytes")
            c = color(s.family) if s.ranked else UNRANKED
            yy = -y
            if b is not None and s.ranked:
                if b > 0:
                    ax2.barh(yy, b - bar_axis.zero_pos / 1.6, left=bar_axis.zero_pos / 1.6, color=c)
                sp = s.spread(s.to_target("bytes"))
                if b > 0 and sp and sp[0] != sp[1]:
                    ax2.errorbar([b], [yy], xerr=[[b - sp[0]], [sp[1] - b]], color="black", capsize=3,
                                 linewidth=1)
                right = max(b, sp[1]) if sp else b
                ax2.text(bar_axis.x(right), yy, "  " + fmt_bytes(b), va="center", fontsize=8)
            else:
                tot = s.total_bytes or 0
                if tot > 0:
                    ax2.barh(yy, tot - bar_axis.zero_pos / 1.6, left=bar_axis.zero_pos / 1.6, color="white",
                             edgecolor=c, hatch="//")
                why = "not reached" if s.ranked else s.status
                ax2.text(bar_axis.x(tot), yy, f"  {why} ({fmt_bytes(tot)} sent)", va="center", fontsize=8)
            labels.append((yy, f"[{g.name}] {s.label}"))
            y += 1
        y += 0.5
    ax2.set_yticks([p for p, _ in labels])
    ax2.set_yticklabels([t for _, t in labels], fontsize=7)
    bar_axis.hi *= 8  # room for the value labels
    bar_axis.apply(ax2, "x")
    ax2.set_xlabel("bytes per rank to the target (seed mean, min-max bar; log; fewer is better)")
    ax2.set_title("bytes to target, ranked within each optimizer", fontsize=10)
    ax2.grid(True, axis="x", alpha=0.3)
    fig.suptitle("lowsync comparison: quality vs communication", fontsize=12, fontweight="bold")
    _save(fig, path)


def frontier(runs, groups, settings, front, metric: str, path: Path) -> None:
    """Final quality vs total bytes, every run; knob sweeps as curves; the Pareto frontier."""
    axis = BytesAxis([r.total_bytes for r in runs])
    fig, ax = plt.subplots(figsize=(12, 6.5), layout="constrained")
    fams: dict[tuple, list] = {}
    for s in settings:
        for r in s.runs:
            fams.setdefault((s.family, r.optimizer, r.lr, r.seed), []).append(r)
    drawn = set()
    for (fam, opt, lr, seed), rs in sorted(fams.items(), key=lambda kv: str(kv[0])):
        ok = sorted((r for r in rs if r.status == "ok" and r.final_quality(metric) is not None
                     and r.total_bytes is not None), key=lambda r: r.total_bytes)
        if not ok:
            continue
        label = f"{fam} ({opt})" if (fam, opt) not in drawn else None
        drawn.add((fam, opt))
        ax.plot([axis.x(r.total_bytes) for r in ok], [r.final_quality(metric) for r in ok],
                color=color(fam), marker=marker(opt), markersize=4, linewidth=0.8, alpha=0.8,
                linestyle="-" if len(ok) > 1 else "none", label=label)
    bad = [r for r in runs if r.status != "ok" and r.total_bytes is not None]
    for r in bad:
        q = r.final_quality(metric)
        if q is not None and math.isfinite(q):
            ax.plot([axis.x(r.total_bytes)], [q], marker="x", color=UNRANKED, markersize=7, linestyle="none")
    if bad:
        ax.plot([], [], marker="x", color=UNRANKED, linestyle="none",
                label=f"not ranked: {len(bad)} diverged/stopped/partial")
    if front:
        xs = [axis.x(r.total_bytes) for r in front]
        ys = [r.final_quality(metric) for r in front]
        ax.step(xs, ys, where="post", color="black", linewidth=1.8, label="Pareto frontier (all runs)")
        ax.plot(xs, ys, marker="D", color="black", markersize=5, linestyle="none")
        for i, r in enumerate(front):
            last = i == len(front) - 1  # the rightmost point: its label goes left, inside the axes
            # Alternately below and above the point: neighbours at close bytes do not overprint.
            ax.annotate(r.label, (axis.x(r.total_bytes), r.final_quality(metric)), fontsize=6,
                        xytext=(-4 if last else 4, -9 if i % 2 == 0 else 4), textcoords="offset points",
                        ha="right" if last else "left")
    for g in groups:
        _reference_lines(ax, g, metric)
    axis.apply(ax, "x")
    qs = [r.final_quality(metric) for r in runs if r.status == "ok" and r.final_quality(metric) is not None]
    if qs:
        lo, hi = min(qs), max(qs)
        pad = 0.08 * (hi - lo or 1)
        ax.set_ylim(lo - pad, hi + 3 * pad)
    _reference_labels(ax, groups, metric)
    ax.set_xlabel("total bytes sent per rank over the run (log)" + ("; 0 B at the left" if axis.has_zero else ""))
    ax.set_ylabel(f"final {_ylabel(metric)}")
    ax.set_title("every run: final quality vs bytes; lines join one strategy's knob sweep at one lr "
                 "and seed; marker = optimizer (o sgd, s adamw, ^ demo)", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax)
    _save(fig, path)


def quality_vs(groups, metric: str, x: str, xlabel: str, path: Path) -> None:
    from compare import representatives  # noqa: PLC0415
    fig, ax = plt.subplots(figsize=(11, 5.5), layout="constrained")
    for gi, g in enumerate(groups):
        for s in representatives(g):
            xs, mean, lo, hi = _seed_curves(s, x, metric)
            if not xs:
                continue
            c = color(s.family) if s.ranked else UNRANKED
            ax.plot(xs, mean, color=c, linestyle="-" if gi == 0 else "--", marker="o", markersize=3,
                    label=s.label + ("" if s.ranked else f" [{s.status}]"))
            if len(s.ok) > 1:
                ax.fill_between(xs, lo, hi, color=c, alpha=0.15, linewidth=0)
        _reference_lines(ax, g, metric)
    _reference_labels(ax, groups, metric)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_ylabel(metric))
    ax.set_title(f"{_ylabel(metric)} vs {xlabel}: best settings, seed mean and min-max", fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend(ax)
    _save(fig, path)


def loss_curves(groups, path: Path) -> None:
    from compare import representatives  # noqa: PLC0415
    fig, ax = plt.subplots(figsize=(11, 5.5), layout="constrained")
    for gi, g in enumerate(groups):
        for s in representatives(g):
            curves = [r.series("step", "loss") for r in s.ok] or [r.series("step", "loss") for r in s.runs[:1]]
            curves = [c for c in curves if c[0]]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c[0]) for c in curves)))
            maps = [dict(zip(*c)) for c in curves]
            ys = [statistics.fmean(m[k] for m in maps) for k in steps]
            pos = [(a, b) for a, b in zip(steps, ys) if b > 0 and math.isfinite(b)]
            if pos:
                ax.plot(*zip(*pos), color=color(s.family) if s.ranked else UNRANKED,
                        linestyle="-" if gi == 0 else "--", label=s.label)
    ax.set_yscale("log")
    # Losses span about a decade: label the minor ticks too (a log axis labels only powers of 10).
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (log; seed mean)")
    ax.set_title("training loss of the best settings", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax)
    _save(fig, path)


def bytes_per_step(settings, path: Path) -> None:
    order = sorted(settings, key=lambda s: (s.first.optimizer, s.family, s.first.bytes_per_step or 0))
    vals = [s.first.bytes_per_step for s in order]
    axis = BytesAxis(vals)
    fig, ax = plt.subplots(figsize=(10, max(4.0, 0.22 * len(order) + 1.5)), layout="constrained")
    base = axis.zero_pos / 1.6
    for i, (s, v) in enumerate(zip(order, vals)):
        c = color(s.family) if s.ranked else UNRANKED
        if v is not None and v > 0:
            ax.barh(-i, v - base, left=base, color=c)
        ax.text(axis.x(v if v is not None else 0), -i, "  " + (fmt_bytes(v) if v is not None else "n/a"),
                va="center", fontsize=7)
    ax.set_yticks([-i for i in range(len(order))])
    ax.set_yticklabels([s.label for s in order], fontsize=7)
    axis.hi *= 8
    axis.apply(ax, "x")
    ax.set_xlabel("bytes sent per rank per step (mean over the run; log)" + ("; 0 B at the left" if axis.has_zero else ""))
    ax.set_title("communication per step, every setting", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    _save(fig, path)


def modeled(groups, links: list, path: Path) -> None:
    from compare import representatives  # noqa: PLC0415
    ns = netmodel.PROJECTED_RANKS
    fig, axes = plt.subplots(1, len(links), figsize=(5.5 * len(links) + 3, 5.5), squeeze=False,
                             layout="constrained", sharey=False)
    any_drawn = False
    for ax, link in zip(axes[0], links):
        for gi, g in enumerate(groups):
            for s in representatives(g):
                if not s.ranked:
                    continue
                p, _ = netmodel.project(s.first, s.mean_to_target("steps"), link)
                if p is None:
                    continue
                any_drawn = True
                ax.plot(ns, [p.time_to_target_s[n] for n in ns], color=color(s.family), marker="o",
                        linestyle="-" if gi == 0 else "--", label=s.label if ax is axes[0][-1] else None)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(ns))
        ax.set_xticklabels([str(n) for n in ns])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g} s"))
        lo, hi = ax.get_ylim()
        # Under a decade of range has no labelled major tick: label the minor ones instead.
        few_decades = lo > 0 and math.floor(math.log10(hi)) - math.ceil(math.log10(lo)) < 1
        # Decimals enough to tell the ticks apart when the times barely differ (compute-bound).
        dec = max(0, 1 - math.floor(math.log10(hi - lo))) if hi > lo else 1
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _, d=dec: f"{v:.{d}f} s") if few_decades else NullFormatter())
        ax.set_xlabel("ranks")
        ax.set_ylabel("MODELED seconds to target")
        ax.set_title(f"{link.name}\nalpha={link.alpha_s * 1e6:.3g} us, {link.beta_Bps * 8 / 1e9:.3g} Gb/s",
                     fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        if not any_drawn:
            ax.text(0.5, 0.5, "no strategy reached its target", transform=ax.transAxes, ha="center")
    _legend(axes[0][-1])
    fig.suptitle("MODELED (alpha-beta, Open MPI tuned algorithms; allreduce overlapped with backward), not "
                 "measured: measured compute/step and steps to target", fontsize=10, color="darkred")
    _save(fig, path)


def model_check(checks, link, path: Path) -> None:
    """Modeled vs measured communication seconds per run, on a log-log y = x chart."""
    fig, ax = plt.subplots(figsize=(7.5, 6), layout="constrained")
    pts = [(c.measured_comm_s, c.modeled_comm_s, c) for c in checks
           if c.measured_comm_s > 0 and c.modeled_comm_s > 0]
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=30, zorder=3, color="tab:blue")
        lo = min(min(p[0], p[1]) for p in pts) / 3
        hi = max(max(p[0], p[1]) for p in pts) * 3
        ax.plot([lo, hi], [lo, hi], color="gray", linestyle="--", label="model = measured")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no run with measured and modeled communication", transform=ax.transAxes,
                ha="center")
    ax.set_xlabel("MEASURED seconds in strategy collectives (per rank, whole run)")
    ax.set_ylabel("MODELED seconds (alpha-beta, same calls and payloads)")
    ax.set_title(f"Network model check, {len(pts)} runs\n{link.name}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, path)
