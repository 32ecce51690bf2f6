"""PNG figures of a comparison (matplotlib, Agg backend, no display needed). Every run keeps one
look in every figure: its strategy picks the colour, its position among that strategy's runs the
line style and marker, so a reader can follow a run from plot to plot.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

import netmodel  # noqa: E402
from runs import RunData, fmt_bytes  # noqa: E402

STRATEGY_COLORS = {"allreduce": "tab:blue", "periodic": "tab:orange", "fda": "tab:green",
                   "demo": "tab:red", "none": "tab:gray"}
SPARE_COLORS = ["tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
DPI = 110


def styles(runs: list[RunData]) -> dict[int, dict]:
    spare = iter(SPARE_COLORS * 4)
    colors = dict(STRATEGY_COLORS)
    seen: dict[str, int] = {}
    out = {}
    for r in runs:
        if r.strategy not in colors:
            colors[r.strategy] = next(spare, "black")
        k = seen.get(r.strategy, 0)
        seen[r.strategy] = k + 1
        out[id(r)] = {"color": colors[r.strategy], "linestyle": LINESTYLES[k % len(LINESTYLES)],
                      "marker": MARKERS[k % len(MARKERS)], "markersize": 4}
    return out


def _legend(ax, n: int) -> None:
    if n > 6:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=8, loc="lower right")


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _bytes_axis(ax, axis: str = "x") -> None:
    """Log base 2, so ticks fall on round binary sizes (1 MiB, 4 MiB), labelled as such."""
    a = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log", base=2)
    a.set_major_locator(LogLocator(base=2, numticks=9))
    a.set_major_formatter(FuncFormatter(lambda v, _: fmt_bytes(v).replace(".00 ", " ")))
    a.set_minor_formatter(NullFormatter())


def _seconds_axis(ax) -> None:
    """Log scale when the plotted times span a decade or more; call after plotting."""
    lo, hi = ax.dataLim.y0, ax.dataLim.y1
    if lo > 0 and hi / lo >= 10:
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g} s"))


def _accuracy_curves(ax, runs, st, x: str, target: float, logx: bool) -> None:
    drawn = 0
    for r in runs:
        xs, ys = r.series(x, "test_acc")
        if logx:
            pts = [(a, b) for a, b in zip(xs, ys) if a > 0]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        drawn += len(xs)
        if not r.eval_rows():
            label = f"{r.label} (no finite test accuracy)"
        else:
            label = r.label if xs or not logx else f"{r.label} (sends no bytes)"
        ax.plot(xs, ys, label=label, **st[id(r)])
        hit = r.target_row(target)
        if hit is not None and hit.get(x) is not None and (not logx or hit[x] > 0):
            ax.plot([hit[x]], [hit["test_acc"] * r.acc_scale], marker="*", markersize=13,
                    color=st[id(r)]["color"], markeredgecolor="black", linestyle="none")
    ax.axhline(target, color="black", linewidth=0.8, linestyle=":")
    # x in axes fraction, y in data: stays inside the plot on a log axis too.
    ax.text(0.01, target, f"target {target:.0%}", va="bottom", fontsize=8,
            transform=ax.get_yaxis_transform())
    if logx:
        ax.set_xscale("log")
        if drawn == 0:  # nothing positive to draw: an empty log axis needs limits of its own
            ax.set_xlim(1, 1024)
    if x == "bytes_sent":
        _bytes_axis(ax)
    ax.set_ylabel("test accuracy")
    ax.grid(True, which="both", alpha=0.3)


def accuracy_vs(runs, x: str, xlabel: str, title: str, target: float, path: Path, logx=False):
    st = styles(runs)
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    _accuracy_curves(ax, runs, st, x, target, logx)
    ax.set_xlabel(xlabel)
    ax.set_title(title + "  (star: first evaluation at target)")
    _legend(ax, len(runs))
    _save(fig, path)


def overview(runs, target: float, headline: str, path: Path) -> None:
    """The one figure that says who wins: accuracy per byte, and bytes to target as bars."""
    st = styles(runs)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, max(4.8, 0.32 * len(runs) + 2)),
                                   gridspec_kw={"width_ratios": [1.3, 1]}, layout="constrained")
    _accuracy_curves(ax1, runs, st, "bytes_sent", target, logx=True)
    ax1.set_xlabel("bytes sent per rank (log)")
    ax1.set_title("test accuracy vs bytes sent (up and left is better)")
    ax1.legend(fontsize=7, loc="best")

    # Bars: fewest bytes to target at the top; runs that never reached it at the bottom, hatched.
    reached = sorted((r for r in runs if r.bytes_to_target(target) is not None),
                     key=lambda r: r.bytes_to_target(target))
    missed = [r for r in runs if r.bytes_to_target(target) is None]
    order = reached + missed
    y = list(range(len(order)))[::-1]
    top = max([r.bytes_to_target(target) for r in reached] + [r.total_bytes or 0 for r in missed] + [1])
    floor = top * 1e-4  # a run that sends no bytes still gets a visible bar on the log axis
    for yi, r in zip(y, order):
        b = r.bytes_to_target(target)
        if b is not None:
            ax2.barh(yi, max(b, floor), color=st[id(r)]["color"])
            ax2.text(max(b, floor), yi, " " + fmt_bytes(b), va="center", fontsize=8)
        else:
            total = max(r.total_bytes or 0, floor)
            ax2.barh(yi, total, color="white", edgecolor=st[id(r)]["color"], hatch="//")
            ax2.text(total, yi, f" not reached ({fmt_bytes(r.total_bytes)} total)",
                     va="center", fontsize=8)
    ax2.set_yticks(y)
    ax2.set_yticklabels([r.label for r in order], fontsize=8)
    _bytes_axis(ax2)
    ax2.set_xlim(floor / 2, top * 30)
    ax2.set_xlabel(f"bytes sent per rank to reach {target:.0%} (log; fewer is better)")
    ax2.set_title(f"bytes to {target:.0%} test accuracy")
    ax2.grid(True, axis="x", which="both", alpha=0.3)
    fig.suptitle(headline, fontsize=12, fontweight="bold")
    _save(fig, path)


def loss_curves(runs, path: Path) -> None:
    st = styles(runs)
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for r in runs:
        xs, ys = r.series("step", "loss")
        ax.plot(xs, ys, label=f"{r.label} train", **{**st[id(r)], "marker": None})
        xs, ys = r.series("step", "test_loss")
        if xs:
            ax.plot(xs, ys, label=f"{r.label} test", linestyle="none", marker=st[id(r)]["marker"],
                    color=st[id(r)]["color"], markersize=5)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log)")
    ax.set_title("training loss (lines) and test loss (markers)")
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, 2 * len(runs))
    _save(fig, path)


def bytes_per_step(runs, path: Path) -> None:
    st = styles(runs)
    order = sorted(runs, key=lambda r: (r.strategy, r.bytes_per_step or 0))
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(order) + 2), 5), layout="constrained")
    xs = range(len(order))
    vals = [r.bytes_per_step or 0 for r in order]
    ax.bar(xs, vals, color=[st[id(r)]["color"] for r in order])
    for x, v in zip(xs, vals):
        ax.text(x, v, fmt_bytes(v), ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r.label for r in order], rotation=60, ha="right", fontsize=8)
    if any(v > 0 for v in vals):
        _bytes_axis(ax, "y")
        ax.set_ylim(top=max(vals) * 20)
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_bytes(v)))
    ax.set_ylabel("bytes sent per rank per step (mean, log)")
    ax.set_title("communication per step, by strategy")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    _save(fig, path)


def modeled(runs, target: float, links: list, path: Path) -> list[RunData]:
    """Projected time to target vs rank count, one panel per link. Returns the runs drawn."""
    st = styles(runs)
    drawn = modeled_runs(runs, target, links[0])
    fig, axes = plt.subplots(1, len(links), figsize=(6.5 * len(links), 5.5), squeeze=False,
                             layout="constrained")
    for ax, link in zip(axes[0], links):
        for r in drawn:
            ys, _ = netmodel.project(r, target, link)
            if ys is not None:
                ax.plot(netmodel.PROJECTED_RANKS, ys, label=r.label, **st[id(r)])
        ax.set_xscale("log", base=2)
        if drawn:
            _seconds_axis(ax)
        ax.set_xticks(netmodel.PROJECTED_RANKS)
        ax.set_xticklabels([str(n) for n in netmodel.PROJECTED_RANKS])
        ax.set_xlabel("ranks")
        ax.set_ylabel(f"MODELED seconds to {target:.0%}")
        ax.set_title(f"{link.name}\nalpha={link.alpha_s * 1e6:g} us, beta={link.beta_Bps / 1e9:g} GB/s",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if drawn:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no run reached the target", transform=ax.transAxes, ha="center")
    fig.suptitle("MODELED projection (alpha-beta network model), not measured: measured compute/step "
                 "and bytes/step,\nsteps to target assumed equal to the measured run's",
                 fontsize=10, color="darkred")
    _save(fig, path)
    return drawn


def modeled_runs(runs, target: float, link) -> list[RunData]:
    """All projectable runs when few; otherwise the fastest per strategy at 256 ranks."""
    ok = [r for r in runs if netmodel.project(r, target, link)[0] is not None]
    if len(ok) <= 8:
        return ok
    best: dict[str, RunData] = {}
    i256 = netmodel.PROJECTED_RANKS.index(256)
    for r in ok:
        t = netmodel.project(r, target, link)[0][i256]
        if r.strategy not in best or t < netmodel.project(best[r.strategy], target, link)[0][i256]:
            best[r.strategy] = r
    return list(best.values())


def model_check(checks, link, path: Path) -> None:
    """Modeled vs measured communication seconds per run, on a log-log y = x chart."""
    fig, ax = plt.subplots(figsize=(7.5, 6), layout="constrained")
    xs = [c.measured_comm_s for c in checks]
    ys = [c.modeled_comm_s for c in checks]
    ranks = sorted({c.ranks for c in checks})
    cmap = plt.get_cmap("viridis")
    for i, n in enumerate(ranks):
        pts = [(c.measured_comm_s, c.modeled_comm_s) for c in checks if c.ranks == n and c.measured_comm_s > 0]
        if pts:
            ax.scatter(*zip(*pts), label=f"{n} ranks", color=cmap(i / max(len(ranks) - 1, 1)), s=40, zorder=3)
    for c in checks:
        if c.measured_comm_s > 0 and c.modeled_comm_s > 0:
            ax.annotate(c.label.split()[0], (c.measured_comm_s, c.modeled_comm_s), fontsize=7,
                        xytext=(4, 2), textcoords="offset points")
    pos = [v for v in xs + ys if v > 0]
    if pos:
        lo, hi = min(pos) / 3, max(pos) * 3
        ax.plot([lo, hi], [lo, hi], color="gray", linestyle="--", label="model = measured")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MEASURED seconds in strategy collectives (per rank, whole run)")
    ax.set_ylabel("MODELED seconds (alpha-beta, same calls and payloads)")
    ax.set_title(f"Network model check\n{link.name}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
