"""Alpha-beta (latency-bandwidth) model of the collectives, used to project a measured run to rank
counts we cannot run. Per call with payload S (bytes this rank hands the collective), N ranks,
latency alpha (s) and bandwidth beta (bytes/s):
    ring allreduce   2(N-1) alpha + 2(N-1)/N * S / beta
    ring allgather    (N-1) alpha +   (N-1) * s / beta      (s = this rank's share)
    tree broadcast  log2(N) alpha +           S / beta
The payload per step comes from summary.json: "ledger" (per collective and traffic class, exact)
when present, else "bytes_by_traffic" (wire bytes, inverted with the formulas of
include/lowsync/comm/ledger.hpp), else the totals.
Projected time to target = measured steps to target x (compute s/step + modeled comm s/step):
the steps to reach the target are assumed not to change with the rank count.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from runs import RunData, _num

PROJECTED_RANKS = (64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class Link:
    name: str
    alpha_s: float
    beta_Bps: float


PRESETS = (Link("100 Gb/s InfiniBand", 2e-6, 12.5e9), Link("25 GbE", 20e-6, 3.1e9))


@dataclass(frozen=True)
class Traffic:
    name: str
    collective: str  # allreduce | allgather | broadcast
    payload_per_step: float  # bytes this rank hands the collective, per training step
    calls_per_step: float


def collective_time(collective: str, n: int, payload: float, calls: float, link: Link) -> float:
    if n <= 1:
        return 0.0
    if collective == "allgather":
        return calls * (n - 1) * link.alpha_s + (n - 1) * payload / link.beta_Bps
    if collective == "broadcast":
        return calls * math.log2(n) * link.alpha_s + payload / link.beta_Bps
    return calls * 2 * (n - 1) * link.alpha_s + 2 * (n - 1) / n * payload / link.beta_Bps


def wire_factor(collective: str, n: int) -> float:
    """Wire bytes per payload byte, as the ledger counts them (ledger.hpp)."""
    if n <= 1:
        return 0.0
    if collective == "allgather":
        return float(n - 1)
    if collective == "broadcast":
        return (n - 1) / n
    return 2 * (n - 1) / n


def classify(traffic: str, strategy: str) -> str:
    t = traffic.lower()
    if "gather" in t or t.startswith("demo"):
        return "allgather"
    if "bcast" in t or "broadcast" in t:
        return "broadcast"
    if t in ("restored", "total"):
        return main_collective(strategy)
    return "allreduce"


def main_collective(strategy: str) -> str:
    return "allgather" if strategy == "demo" else "allreduce"


def _from_ledger(ledger: list, steps: int) -> list[Traffic] | None:
    """summary.json "ledger": [{"collective", "traffic", "calls", "payload_bytes", ...}], exact."""
    out = []
    for e in ledger:
        if not isinstance(e, dict):
            return None
        coll, calls, payload = e.get("collective"), _num(e.get("calls")), _num(e.get("payload_bytes"))
        if not isinstance(coll, str) or calls is None or payload is None:
            return None
        name = str(e.get("traffic", coll))
        if name.startswith("obs") or coll in ("barrier", "send", "recv") or payload <= 0:
            continue  # logging collectives and point-to-point are not part of a strategy's cost
        kind = ("allgather" if coll.startswith("allgather") or coll == "gather"
                else "broadcast" if coll == "broadcast" else "allreduce")
        out.append(Traffic(f"{coll}/{name}", kind, payload / steps, calls / steps))
    return out


def traffic_profile(run: RunData) -> list[Traffic] | None:
    """Per-step traffic of a run, or None when the run does not say enough."""
    steps, n0 = run.steps, run.ranks
    if steps <= 0 or n0 is None:
        return None
    ledger = run.summary.get("ledger")
    if isinstance(ledger, list) and ledger:
        exact = _from_ledger(ledger, steps)
        if exact is not None:
            return exact
    syncs = run.syncs
    sync_calls = (syncs / steps) if syncs is not None else 1.0
    out: list[Traffic] = []
    by_traffic = run.summary.get("bytes_by_traffic")
    if isinstance(by_traffic, dict) and by_traffic:
        numbers = [_num(v) for v in by_traffic.values()]
        # Plain numbers are wire bytes unless they add up to the payload and not the wire total.
        plain_is_payload = False
        if all(x is not None for x in numbers):
            total, payload, wire = sum(numbers), run.total_payload, run.total_bytes
            plain_is_payload = (payload is not None and math.isclose(total, payload, rel_tol=1e-6)
                                and not (wire is not None and math.isclose(total, wire, rel_tol=1e-6)))
        # Strategies that never average models send "model" traffic once: the initial broadcast.
        one_time_model = run.strategy not in ("periodic", "fda")
        for name, v in sorted(by_traffic.items()):
            if name.startswith("obs"):
                continue
            coll = classify(name, run.strategy)
            if name == "model" and one_time_model:
                coll = "broadcast"
            payload = calls = wire = None
            if isinstance(v, dict):
                payload, calls, wire = (_num(v.get("payload_bytes")), _num(v.get("calls")),
                                        _num(v.get("wire_bytes", v.get("bytes"))))
                if isinstance(v.get("collective"), str):
                    coll = classify(v["collective"], run.strategy)
            elif plain_is_payload:
                payload = _num(v)
            else:
                wire = _num(v)
            if payload is None and wire is not None and n0 > 1:
                payload = wire / wire_factor(coll, n0)
            if payload is None:
                return _from_totals(run, steps, n0, sync_calls)
            if calls is not None:
                calls /= steps
            elif coll == "broadcast" or (name == "model" and one_time_model):
                calls = 1.0 / steps
            else:
                # The sync traffic runs once per sync; anything else (monitors) once per step.
                calls = sync_calls if name in ("grad", "model", "demo", "restored") else 1.0
            if payload > 0:
                out.append(Traffic(name, coll, payload / steps, calls))
        return out
    return _from_totals(run, steps, n0, sync_calls)


def _from_totals(run: RunData, steps: int, n0: int, sync_calls: float) -> list[Traffic] | None:
    coll = main_collective(run.strategy)
    payload = run.total_payload
    if payload is None:
        wire = run.total_bytes
        if wire is None or n0 <= 1:
            return None
        payload = wire / wire_factor(coll, n0)
    return [Traffic("total", coll, payload / steps, sync_calls)] if payload > 0 else []


def comm_seconds_per_step(profile: list[Traffic], n: int, link: Link) -> float:
    return sum(collective_time(t.collective, n, t.payload_per_step, t.calls_per_step, link)
               for t in profile)


def measured_link(runs: list[RunData]) -> Link | None:
    """The "measured" link: median of the alpha/beta the runs measured, when any did."""
    alphas, betas = [], []
    for r in runs:
        a, b = _num(r.summary.get("net_alpha_s")), _num(r.summary.get("net_beta_Bps"))
        if a is not None and b is not None and a >= 0 and b > 0:
            alphas.append(a)
            betas.append(b)
    if not alphas:
        return None
    return Link(f"measured (alpha={statistics.median(alphas) * 1e6:.3g} us, "
                f"beta={statistics.median(betas) / 1e9:.3g} GB/s)",
                statistics.median(alphas), statistics.median(betas))


def project(run: RunData, target: float, link: Link,
            ranks=PROJECTED_RANKS) -> tuple[list[float] | None, str]:
    """Projected seconds to target at each rank count, or (None, why not)."""
    steps_to_target = run.steps_to_target(target)
    if steps_to_target is None:
        return None, "target not reached"
    compute = run.compute_s_per_step
    if compute is None:
        return None, "no compute time per step"
    profile = traffic_profile(run)
    if profile is None:
        return None, "no byte ledger or rank count"
    return [steps_to_target * (compute + comm_seconds_per_step(profile, n, link)) for n in ranks], ""
