#!/usr/bin/python3
"""The network model against measured runs on a calibrated link (issue 21): for each run, the
measured communication seconds per step (summary.json ledger "seconds_max_rank": per collective the
slowest rank's seconds, or rank 0's "seconds" for runs before it; obs traffic left out) next to the alpha-beta model's for the same calls and payloads with the link's
alpha and beta (tools/bench/bench_comm --json), the error, and whether the row is bandwidth-bound;
then time to target, measured against modeled, and whether the model ranks the runs the same way.
`lowsync compare --calibration FILE` adds this section to report.md; run alone it prints the
section (and checks a tolerance):
usage: calibration.py RUN_DIR... --calibration FILE [--target-acc A] [--max-error E] [--json OUT]
Exit status: 0 ok; 1 a bandwidth-bound row is off by more than --max-error, or a run or the
calibration is unreadable (one line on stderr); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netmodel  # noqa: E402
from runs import RunData, RunError, _num, assign_labels, discover  # noqa: E402

# A row is bandwidth-bound when the model's bandwidth term (payload / beta) is at least this share
# of its modeled communication time; the rest is latency (calls x alpha), where a model of a
# loaded 2-core machine cannot be held to 25% (scheduling noise is tens of microseconds).
BANDWIDTH_BOUND_SHARE = 0.5
TARGET_ERROR = 0.25


@dataclass(frozen=True)
class Calibration:
    path: Path
    label: str
    ranks: int | None
    link: "netmodel.Link"


def load(path) -> Calibration:
    """bench_comm --json FILE: alpha_s, beta_Bps (required), label and ranks (optional)."""
    link = netmodel.load_calibration(path)  # ValueError with one line on a bad file
    data = json.loads(Path(path).read_text())
    label = data.get("label") if isinstance(data.get("label"), str) else ""
    ranks = _num(data.get("ranks"))
    # On a shaped link a rank that sends and receives at once (every collective here) gets ~0.57x
    # the one-way ping-pong rate (measured over tools/netem, README): the model takes the beta
    # that fits MPI_Allreduce at >= 1 MiB on the same link when bench_comm measured it.
    # One-way collectives (broadcast, send, gather) keep the ping-pong beta (ONE_WAY_BETA).
    duplex = _num(data.get("allreduce_beta_Bps"))
    if duplex is not None and duplex > 0:
        ONE_WAY_BETA[link.name] = link.beta_Bps
        link = netmodel.Link(link.name, link.alpha_s, duplex)
    # Open MPI's broadcast of a few MB at 4 ranks moved the message over the root's link about 3
    # times on a shaped link (0.54-0.71 s for 2.14 MB at 100 Mbit/s against 0.17 s one way): where
    # bench_comm timed MPI_Bcast, broadcasts take the beta that fits it (>= 1 MiB, slowest rank).
    bcast = _num(data.get("broadcast_beta_Bps"))
    if bcast is not None and bcast > 0:
        BROADCAST_BETA[link.name] = bcast
    # Below 1 MiB the allreduce fit does not hold: a message that fits in TCP's window does not see
    # the duplex slowdown (bench_comm's allreduce at 16-64 KiB ran at the line rate on 100 Mbit/s,
    # twice the >= 1 MiB fit). Where bench_comm measured MPI_Allreduce at
    # every size, a collective below 1 MiB per call takes the beta the ring formula needs to match
    # the measured allreduce of the same size (log-interpolated between measured sizes).
    if duplex is not None and duplex > 0 and ranks:
        SIZED_BETA[link.name] = _sized_betas(data.get("points"), int(ranks), link.alpha_s)
    # An emulated link's token bucket (tools/netem: tbf, ~1 ms of traffic; model_check.sh records
    # it from netem.sh): it refills while the ranks compute, so the first bucket's worth of bytes
    # of a call that follows compute leave at once. bench_comm's back-to-back calls keep it empty,
    # and a real link has none.
    bucket = _num(data.get("shaper_bucket_bytes"))
    if bucket is not None and bucket > 0:
        BUCKET[link.name] = bucket
    return Calibration(Path(path), label, int(ranks) if ranks else None, link)


ONE_WAY_BETA: dict[str, float] = {}  # link name -> ping-pong beta, where it differs from link.beta_Bps
BROADCAST_BETA: dict[str, float] = {}  # link name -> the beta that fits MPI_Bcast, when measured
SIZED_BETA: dict[str, list[tuple[float, float]]] = {}  # link name -> [(bytes, beta)] below 1 MiB
BUCKET: dict[str, float] = {}  # link name -> the shaper's token bucket in bytes (emulated links)
ONE_WAY = ("broadcast", "send", "recv", "gather")
SIZED_BELOW = float(1 << 20)  # the allreduce fit is taken over >= 1 MiB; sizes below use SIZED_BETA


def _sized_betas(points, n: int, alpha: float) -> list[tuple[float, float]]:
    """(bytes, beta) from bench_comm's allreduce points: the beta with which the ring formula
    2(n-1) alpha + 2(n-1)/n S / beta gives the measured time, for 4 KiB <= S < 1 MiB (smaller
    messages are latency: their beta is noise)."""
    out = []
    for p in points if isinstance(points, list) else []:
        if not isinstance(p, dict):
            continue
        size, t = _num(p.get("bytes")), _num(p.get("allreduce_s"))
        if size is None or t is None or not (4096 <= size < SIZED_BELOW):
            continue
        rest = t - 2 * (n - 1) * alpha
        if rest > 0:
            out.append((size, 2 * (n - 1) / n * size / rest))
    return sorted(out)


def sized_beta(link, per_call: float) -> float | None:
    """The measured beta at per_call bytes (log-interpolated; clamped to the measured range), or
    None at >= 1 MiB or without measured points."""
    pts = SIZED_BETA.get(link.name)
    if not pts or per_call >= SIZED_BELOW or per_call <= 0:
        return None
    if per_call <= pts[0][0]:
        return pts[0][1]
    for (s0, b0), (s1, b1) in zip(pts, pts[1:]):
        if per_call <= s1:
            w = math.log(per_call / s0) / math.log(s1 / s0)
            return math.exp((1 - w) * math.log(b0) + w * math.log(b1))
    return pts[-1][1]


def _link_for(collective: str, link, single_beta: bool, per_call: float = math.inf):
    if single_beta:
        return link
    if collective == "broadcast" and link.name in BROADCAST_BETA:
        return netmodel.Link(link.name, link.alpha_s, BROADCAST_BETA[link.name])
    if collective not in ONE_WAY or link.name not in ONE_WAY_BETA:
        beta = sized_beta(link, per_call) if collective not in ONE_WAY else None
        return link if beta is None else netmodel.Link(link.name, link.alpha_s, beta)
    return netmodel.Link(link.name, link.alpha_s, ONE_WAY_BETA[link.name])


@dataclass(frozen=True)
class Row:
    label: str
    strategy: str
    ranks: int
    steps: int
    measured_s: float          # per step, per rank
    modeled_s: float           # per step: latency + bandwidth terms
    modeled_bandwidth_s: float  # per step: the payload / beta part

    @property
    def error(self) -> float | None:
        return (self.modeled_s - self.measured_s) / self.measured_s if self.measured_s > 0 else None

    @property
    def bandwidth_share(self) -> float:
        return self.modeled_bandwidth_s / self.modeled_s if self.modeled_s > 0 else 0.0

    @property
    def bandwidth_bound(self) -> bool:
        return self.bandwidth_share >= BANDWIDTH_BOUND_SHARE


def _ledger(run: RunData) -> list[dict] | None:
    ledger = run.summary.get("ledger")
    if not isinstance(ledger, list) or not ledger:
        return None
    out = []
    for e in ledger:
        if not isinstance(e, dict) or str(e.get("traffic", "")).startswith("obs"):
            continue
        # The slowest rank's seconds when the run has them: a collective is done when the last rank
        # has its data (the root of a broadcast returns as soon as its sends are queued).
        seconds = _num(e.get("seconds_max_rank", e.get("seconds")))
        calls, payload = _num(e.get("calls")), _num(e.get("payload_bytes"))
        if not isinstance(e.get("collective"), str) or None in (calls, payload, seconds):
            return None
        out.append({"collective": e["collective"], "traffic": str(e.get("traffic", "")), "calls": calls,
                    "payload": payload, "seconds": seconds})
    return out


def overlap_window_s(run: RunData) -> float:
    """Streaming DiLoCo with sync.diloco.overlap = tau: a fragment's allreduce is started at its
    sync step and waited for tau inner steps later, so up to tau steps of compute hide it. The
    ledger books only the seconds spent blocked in start + wait; the model does the same."""
    tau = _num(run.config.get("sync.diloco.overlap")) if run.strategy == "diloco" else None
    compute = run.compute_s_per_step
    return tau * compute if tau and compute else 0.0


def modeled_per_step(entries: list[dict], n: int, steps: int, link, single_beta=False,
                     hidden_s: float = 0.0) -> tuple[float, float]:
    """(modeled seconds per step, its bandwidth part) for the ledger's calls at n ranks. hidden_s:
    compute seconds that overlap each of DiLoCo's non-blocking allreduces (overlap_window_s); a
    call is exposed for max(0, its modeled time - hidden_s), at the mean fragment size."""
    latency_only = netmodel.Link("latency only", link.alpha_s, math.inf)
    bucket = 0.0 if single_beta else BUCKET.get(link.name, 0.0)
    total = alpha = 0.0
    for e in entries:
        per_call = e["payload"] / e["calls"] if e["calls"] > 0 else math.inf
        call_link = _link_for(e["collective"], link, single_beta, per_call)
        t = netmodel.collective_time(e["collective"], n, e["payload"], e["calls"], call_link)
        a = netmodel.collective_time(e["collective"], n, e["payload"], e["calls"], latency_only)
        if bucket > 0 and e["calls"] > 0:
            # At most one call per step follows compute (the bucket has refilled); each sends
            # wire_bytes / calls, of which the first `bucket` bytes cost no time.
            sent = netmodel.wire_bytes(e["collective"], n, e["payload"], e["calls"]) / e["calls"]
            credit = min(e["calls"], steps) * min(bucket, sent) / call_link.beta_Bps
            t = max(a, t - credit)
        if hidden_s > 0 and e["collective"] == "allreduce" and e.get("traffic") == "diloco" and e["calls"] > 0:
            exposed = max(0.0, t / e["calls"] - hidden_s) * e["calls"]
            a *= exposed / t if t > 0 else 0.0
            t = exposed
        total += t
        alpha += a
    return total / steps, (total - alpha) / steps


def row(run: RunData, link) -> Row | None:
    entries, n, steps = _ledger(run), run.ranks, run.steps
    if entries is None or n is None or n < 2 or steps <= 0:
        return None
    modeled, bandwidth = modeled_per_step(entries, n, steps, link, hidden_s=overlap_window_s(run))
    measured = sum(e["seconds"] for e in entries) / steps
    return Row(run.label, run.strategy, n, steps, measured, modeled, bandwidth)


@dataclass(frozen=True)
class TimeToTarget:
    label: str
    steps: float
    measured_s: float   # training seconds (compute + comm, metrics.csv) at the first evaluation at or above the target
    modeled_s: float    # steps x (measured compute s/step + modeled comm s/step) + the start-up broadcast
    wall_s: float       # wall clock at that evaluation (also holds evaluations, start-up and waits)


def time_to_target(run: RunData, link, target: float) -> TimeToTarget | None:
    steps, compute, row = run.steps_to_target(target), run.compute_s_per_step, run.target_row(target)
    entries, n = _ledger(run), run.ranks
    if None in (steps, compute, row, entries, n) or n < 2:
        return None
    wall, step_compute, step_comm = _num(row.get("wall_s")), _num(row.get("compute_s")), _num(row.get("comm_s"))
    if wall is None:
        return None
    # The same seconds the model counts: training (compute + communication), not the evaluations
    # and start-up that the wall clock also holds (a run that evaluates more often before reaching
    # the target would otherwise rank later for it).
    measured = step_compute + step_comm if None not in (step_compute, step_comm) else wall
    # The broadcast of the model at the start happens once, whenever the target is reached: it is
    # charged once, not spread over the run's steps (a run reaching the target at step 75 of 200
    # would otherwise be charged 75/200 of it).
    once = [e for e in entries if e["collective"] == "broadcast" and e["calls"] == 1]
    per_step = [e for e in entries if e not in once]
    comm, _ = modeled_per_step(per_step, n, run.steps, link, hidden_s=overlap_window_s(run))
    start, _ = modeled_per_step(once, n, 1, link)
    return TimeToTarget(run.label, steps, measured, steps * (compute + comm) + start, wall)


def ranking(values: dict[str, float]) -> list[str]:
    return [k for k, _ in sorted(values.items(), key=lambda kv: kv[1])]


def fmt_s(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def section(runs: list[RunData], calibration_path, target: float) -> list[str]:
    """The report's markdown section (a list of lines)."""
    cal = load(calibration_path)
    link = cal.link
    out = [f"## Calibration: communication per step, measured vs modeled ({cal.label or cal.path.name})", "",
           f"Link calibrated by bench_comm ({cal.path}): alpha = {link.alpha_s * 1e6:.1f} us (ping-pong), "
           f"beta = {link.beta_Bps / 1e6:.4g} MB/s (MPI_Allreduce fit when measured, else ping-pong) ({link.beta_Bps * 8 / 1e9:.4g} Gbit/s)"
           + (f"; broadcasts: {BROADCAST_BETA[link.name] / 1e6:.4g} MB/s (MPI_Bcast fit)" if link.name in BROADCAST_BETA else "")
           + ". Measured = the seconds "
           "the strategy's collectives took per step (byte ledger, per collective the slowest rank's "
           "seconds, obs traffic left out; runs with comm.separate_waits book the wait for a late rank apart, "
           "otherwise it is included); modeled = the alpha-beta formulas for the same calls "
           "and payloads at the run's rank count. Error = (modeled - measured) / measured. A row is "
           f"bandwidth-bound when payload/beta is at least {BANDWIDTH_BOUND_SHARE:.0%} of its modeled time; "
           f"target: within {TARGET_ERROR:.0%} on those.", ""]
    rows = [r for r in (row(run, link) for run in runs) if r is not None]
    if not rows:
        return out + ["No run with a byte ledger and 2 or more ranks.", ""]
    if cal.ranks is not None and any(r.ranks != cal.ranks for r in rows):
        out += [f"Note: calibrated on {cal.ranks} ranks; runs at other rank counts share the link profile.", ""]
    out += ["| Run | Ranks | Steps | Measured comm/step | Modeled comm/step | Error | Bandwidth share | Bound |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        err = "n/a" if r.error is None else f"{r.error:+.0%}"
        out.append(f"| {r.label} | {r.ranks} | {r.steps} | {fmt_s(r.measured_s)} | {fmt_s(r.modeled_s)} | {err} | "
                   f"{r.bandwidth_share:.0%} | {'bandwidth' if r.bandwidth_bound else 'latency'} |")
    bw = [r for r in rows if r.bandwidth_bound and r.error is not None]
    if bw:
        worst = max(bw, key=lambda r: abs(r.error))
        verdict = "met" if abs(worst.error) <= TARGET_ERROR else "missed"
        out += ["", f"Bandwidth-bound rows: {len(bw)}, largest error {worst.error:+.0%} ({worst.label}): "
                f"target {TARGET_ERROR:.0%} {verdict}."]
    out.append("")

    ttt = [t for t in (time_to_target(run, link, target) for run in runs) if t is not None]
    out += [f"### Time to {target:.0%} test accuracy on this link, measured vs modeled", ""]
    if len(ttt) < 2:
        return out + [f"Fewer than two runs reached {target:.0%}: no ranking to compare.", ""]
    measured_order = ranking({t.label: t.measured_s for t in ttt})
    modeled_order = ranking({t.label: t.modeled_s for t in ttt})
    out += ["Modeled = measured steps to target x (measured compute s/step + modeled comm s/step), plus the start-up broadcast once; measured "
            "= training seconds (compute + communication, metrics.csv, rank mean) at the first evaluation at "
            "or above the target; wall = the wall clock there, which also holds the evaluations, start-up and "
            "waits for a slower rank that neither side counts.", "",
            "| Run | Steps to target | Measured | Modeled | Error | Measured rank | Modeled rank | Wall |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in sorted(ttt, key=lambda t: t.measured_s):
        out.append(f"| {t.label} | {t.steps:.0f} | {fmt_s(t.measured_s)} | {fmt_s(t.modeled_s)} | "
                   f"{(t.modeled_s - t.measured_s) / t.measured_s:+.0%} | {measured_order.index(t.label) + 1} | "
                   f"{modeled_order.index(t.label) + 1} | {fmt_s(t.wall_s)} |")
    same = measured_order == modeled_order
    out += ["", "Same order, measured and modeled: " + ("**yes**" if same else
            f"**no** (measured: {' < '.join(measured_order)}; modeled: {' < '.join(modeled_order)})"), ""]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Measured vs modeled communication per step on a calibrated link.")
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--calibration", required=True, type=Path, metavar="FILE", help="bench_comm --json output")
    ap.add_argument("--target-acc", type=float, default=0.8, help="target test accuracy (fraction, default 0.8)")
    ap.add_argument("--max-error", type=float, default=None,
                    help="exit 1 when a bandwidth-bound row's |error| exceeds this fraction")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    if not 0 < args.target_acc <= 1:
        print(f"calibration: --target-acc must be in (0, 1], got {args.target_acc}", file=sys.stderr)
        return 2
    if args.max_error is not None and not args.max_error > 0:
        print(f"calibration: --max-error must be > 0, got {args.max_error}", file=sys.stderr)
        return 2
    try:
        paths, _, _ = discover(args.runs)  # finished runs; partial ones and warnings unused here
        runs = [RunData.load(p) for p in paths]
        assign_labels(runs)
        print("\n".join(section(runs, args.calibration, args.target_acc)))
        link = load(args.calibration).link
    except (RunError, ValueError) as e:
        print(f"calibration: {e}", file=sys.stderr)
        return 1
    rows = [(run, r) for run in runs if (r := row(run, link)) is not None]
    if args.json:
        args.json.write_text(json.dumps([{
            "run": str(run.path), "label": r.label, "strategy": r.strategy, "ranks": r.ranks, "steps": r.steps,
            "measured_s_per_step": r.measured_s, "modeled_s_per_step": r.modeled_s, "error": r.error,
            "bandwidth_share": r.bandwidth_share, "bandwidth_bound": r.bandwidth_bound,
            # with link.beta for every collective, as the trainer's modeled_comm_s (one beta)
            "modeled_s_per_step_one_beta": modeled_per_step(_ledger(run), r.ranks, r.steps, link, True)[0]}
            for run, r in rows], indent=2) + "\n")
    if args.max_error is not None:
        bad = [r for _, r in rows if r.bandwidth_bound and r.error is not None and abs(r.error) > args.max_error]
        for r in bad:
            print(f"calibration: {r.label}: modeled {fmt_s(r.modeled_s)} per step vs measured {fmt_s(r.measured_s)} "
                  f"({r.error:+.0%}), beyond --max-error {args.max_error:.0%}", file=sys.stderr)
        if bad or not any(r.bandwidth_bound for _, r in rows):
            if not bad:
                print("calibration: no bandwidth-bound run to check", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
