"""Alpha-beta (latency-bandwidth) model of the collectives, used to project a measured run to rank
counts we cannot run. Per call with payload S (bytes this rank hands the collective), N ranks,
latency alpha (s) and bandwidth beta (bytes/s), the formulas of src/comm/netmodel.cpp:
    allreduce (ring)          2(N-1) alpha + 2(N-1)/N * S / beta
    allgather(v), gather      (N-1) alpha  +  (N-1) * s / beta     (s = this rank's share)
    reduce_scatter (ring)     (N-1) alpha  + (N-1)/N * S / beta
    broadcast (tree)     ceil(log2 N) alpha +          S / beta
    barrier            2 ceil(log2 N) alpha;  send/recv  alpha + S / beta
The traffic per step comes from summary.json "ledger" (one entry per collective and traffic
class: calls, payload bytes, measured seconds), which makes the model exact for the run's own
calls: sum over entries of calls x per-call formula at the mean payload per call (the payload term
is linear, so the mean is exact). Older runs without it fall back to "bytes_by_traffic" (wire
bytes, inverted with the formulas of include/lowsync/comm/ledger.hpp), else the totals.
Projected time to target = measured steps to target x (compute s/step + modeled comm s/step):
the steps to reach the target are assumed not to change with the rank count.
Links: PRESETS (documented typical clusters) and, from tools/bench/bench_comm --json, the alpha
and beta measured on this machine (load_calibration).
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


# Typical clusters. 100 Gb/s InfiniBand (HDR100/EDR): ~2 us MPI latency end to end, 12.5 GB/s
# line rate. 25 GbE with TCP: ~20 us latency, ~3.1 GB/s (line rate 3.125 GB/s). Both are per-link
# figures; the ring formulas assume every rank drives its link at that rate (no congestion).
PRESETS = (Link("100 Gb/s InfiniBand", 2e-6, 12.5e9), Link("25 GbE", 20e-6, 3.1e9))


def load_calibration(path) -> Link:
    """The link measured by `mpirun -n 2 build/bin/bench_comm --json FILE` (alpha_s, beta_Bps)."""
    import json
    try:
        data = json.loads(open(path).read())
        alpha, beta = float(data["alpha_s"]), float(data["beta_Bps"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a bench_comm calibration ({e})") from None
    if not (alpha >= 0 and beta > 0):
        raise ValueError(f"{path}: alpha_s must be >= 0 and beta_Bps > 0, got {alpha}, {beta}")
    return Link(f"measured here (bench_comm: alpha={alpha * 1e6:.3g} us, beta={beta / 1e9:.3g} GB/s)",
                alpha, beta)


@dataclass(frozen=True)
class Traffic:
    name: str
    collective: str  # a ledger collective name (allreduce, allgather, broadcast, ...)
    payload_per_step: float  # bytes this rank hands the collective, per training step
    calls_per_step: float


def collective_time(collective: str, n: int, payload: float, calls: float, link: Link) -> float:
    """Modeled seconds of `calls` calls moving `payload` bytes in all (this rank), at n ranks."""
    if n <= 1:
        return 0.0
    a, b = link.alpha_s, link.beta_Bps
    log2n = math.ceil(math.log2(n))
    if collective in ("allgather", "allgatherv", "gather"):
        return calls * (n - 1) * a + (n - 1) * payload / b
    if collective == "reduce_scatter":
        return calls * (n - 1) * a + (n - 1) / n * payload / b
    if collective == "broadcast":
        return calls * log2n * a + payload / b
    if collective == "barrier":
        return calls * 2 * log2n * a
    if collective in ("send", "recv"):
        return calls * a + payload / b
    return calls * 2 * (n - 1) * a + 2 * (n - 1) / n * payload / b


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
    """summary.json "ledger": [{"collective", "traffic", "calls", "payload_bytes", ...}], exact:
    every entry but the "obs" (logging) ones, each with its own collective's formula."""
    out = []
    for e in ledger:
        if not isinstance(e, dict):
            return None
        coll, calls, payload = e.get("collective"), _num(e.get("calls")), _num(e.get("payload_bytes"))
        if not isinstance(coll, str) or calls is None or payload is None:
            return None
        name = str(e.get("traffic", coll))
        if name.startswith("obs") or calls <= 0:
            continue
        out.append(Traffic(f"{coll}/{name}", coll, payload / steps, calls / steps))
    return out


def measured_comm_seconds(run: RunData) -> float | None:
    """Seconds per rank the run spent in its strategy's collectives (the ledger's "seconds",
    obs traffic left out), or None when the run has no ledger."""
    ledger = run.summary.get("ledger")
    if not isinstance(ledger, list) or not ledger:
        return None
    total = 0.0
    for e in ledger:
        if not isinstance(e, dict) or str(e.get("traffic", "")).startswith("obs"):
            continue
        s = _num(e.get("seconds"))
        if s is None:
            return None
        total += s
    return total


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


def configured_link(run: RunData) -> Link | None:
    """The link the run was configured with (net.alpha_us, net.beta_gbps; summary.json)."""
    a, b = _num(run.summary.get("net_alpha_s")), _num(run.summary.get("net_beta_Bps"))
    if a is None or b is None or a < 0 or b <= 0:
        return None
    return Link("configured", a, b)


@dataclass(frozen=True)
class Check:
    """The model against one measured run, at the run's own rank count."""
    label: str
    ranks: int
    steps: int
    measured_comm_s: float   # strategy collectives, s per rank over the run (ledger seconds)
    modeled_comm_s: float
    measured_step_s: float | None  # timed step (compute + comm + waits), from samples/s
    modeled_step_s: float | None   # compute s/step + modeled comm s/step

    @property
    def comm_error(self) -> float | None:
        return (self.modeled_comm_s - self.measured_comm_s) / self.measured_comm_s if self.measured_comm_s > 0 else None

    @property
    def step_error(self) -> float | None:
        if self.measured_step_s is None or self.modeled_step_s is None or self.measured_step_s <= 0:
            return None
        return (self.modeled_step_s - self.measured_step_s) / self.measured_step_s


def validate(run: RunData, link: Link) -> Check | None:
    """Modeled vs measured communication (and step) time of a run at its own rank count."""
    n, steps = run.ranks, run.steps
    profile, measured = traffic_profile(run), measured_comm_seconds(run)
    if n is None or n < 2 or steps <= 0 or profile is None or measured is None:
        return None
    modeled = comm_seconds_per_step(profile, n, link) * steps
    step_measured = step_modeled = None
    sps, batch, compute = run.samples_per_s, _num(run.summary.get("batch_per_rank")), run.compute_s_per_step
    if sps and batch:
        step_measured = batch * n / sps
    if compute is not None:
        step_modeled = compute + modeled / steps
    return Check(run.label, n, steps, measured, modeled, step_measured, step_modeled)


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
