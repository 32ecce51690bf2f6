"""Alpha-beta (latency-bandwidth) model of the collectives, used to project a measured run to rank
counts we cannot run. A message of S bytes over one link costs alpha + S / beta. The algorithm of
each collective is the one Open MPI 4.1's `tuned` component picks by default for that message
size and rank count (ompi/mca/coll/tuned/coll_tuned_decision_fixed.c, tag v4.1.4, the version
installed here; unchanged on main), so small messages pay log2 N latencies, not a ring's 2(N-1):
    allreduce   recursive doubling  (log2 P + 2[N != P]) (alpha + S/beta)       P = 2^floor(log2 N)
                ring, segmented ring 2(N-1) alpha + 2(N-1)/N S/beta
                Rabenseifner        2 log2 P alpha + 2(P-1)/P S/beta (+ 2 alpha + S/beta if N != P)
                reduce + bcast      2 ceil(log2 N) (alpha + S/beta)   ("nonoverlapping", binomial)
    allgather(v) two procs alpha + s/beta; recursive doubling, Bruck ceil(log2 N) alpha + (N-1) s/beta;
                ring (N-1) alpha + (N-1) s/beta; neighbor exchange N/2 alpha + (N-1) s/beta
    broadcast (pipelined tree) ceil(log2 N) alpha + S/beta; reduce_scatter, alltoall (N-1) alpha +
    (N-1)/N S/beta; gather (N-1)(alpha + s/beta); barrier 2 ceil(log2 N) alpha; send/recv alpha + S/beta.
The same formulas are in src/comm/netmodel.cpp (the trainer's modeled_comm_s); a test holds them equal.
The traffic per step comes from summary.json "ledger" (calls, payload bytes and measured seconds per
collective and traffic class); every call is charged at the mean payload per call.
The allreduce baseline is modeled as frameworks run it (PyTorch DDP): the gradient in buckets
(first 1 MiB, then 25 MiB, DDP's defaults), each bucket's allreduce starting once backward has
produced it, so step = forward + max(backward, bucket pipeline), with backward = 2/3 of the
measured compute (the usual 2:1 FLOP ratio). Other strategies communicate after the step.
Projected time to target = steps to target (as measured at the run's own rank count) x modeled step.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from runs import RunData, _num

PROJECTED_RANKS = (64, 256, 1024)
DDP_FIRST_BUCKET_BYTES = 1 << 20    # torch.distributed: _DEFAULT_FIRST_BUCKET_BYTES
DDP_BUCKET_BYTES = 25 << 20         # DistributedDataParallel(bucket_cap_mb=25)
BACKWARD_FRACTION = 2.0 / 3.0       # backward ~ 2x forward FLOPs


@dataclass(frozen=True)
class Link:
    name: str
    alpha_s: float
    beta_Bps: float


# Typical clusters. 100 Gb/s InfiniBand (HDR100/EDR): ~2 us MPI latency end to end, 12.5 GB/s
# line rate. 25 GbE with TCP: ~20 us latency, ~3.1 GB/s (line rate 3.125 GB/s). Per-link figures;
# the formulas assume every rank drives its link at that rate (no congestion).
PRESETS = (Link("100 Gb/s InfiniBand", 2e-6, 12.5e9), Link("25 GbE", 20e-6, 3.1e9))


def load_calibration(path) -> Link:
    """The link measured by `mpirun -n 2 build/bin/bench_comm --json FILE` (alpha_s, beta_Bps)."""
    try:
        data = json.loads(Path(path).read_text())
        alpha, beta = float(data["alpha_s"]), float(data["beta_Bps"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a bench_comm calibration ({e})") from None
    if not (alpha >= 0 and beta > 0):
        raise ValueError(f"{path}: alpha_s must be >= 0 and beta_Bps > 0, got {alpha}, {beta}")
    return Link(f"measured here (bench_comm: alpha={alpha * 1e6:.3g} us, beta={beta / 1e9:.3g} GB/s)",
                alpha, beta)


# Open MPI 4.1 coll_tuned_decision_fixed.c, ompi_coll_tuned_allreduce_intra_dec_fixed, commutative
# branch: (communicator_size <, [(total_dsize <, algorithm), ...]); the last pair of a row has no
# bound. 2 nonoverlapping (reduce + bcast), 3 recursive doubling, 4 ring, 5 segmented ring,
# 6 Rabenseifner.
INF = math.inf
ALLREDUCE_TABLE = (
    (4, ((8, 4), (4096, 3), (8192, 4), (16384, 3), (65536, 4), (262144, 5), (INF, 6))),
    (8, ((16, 4), (8192, 3), (INF, 6))),
    (16, ((8192, 3), (INF, 6))),
    (32, ((64, 5), (4096, 3), (INF, 6))),
    (64, ((128, 5), (INF, 6))),
    (128, ((262144, 3), (INF, 6))),
    (256, ((131072, 2), (262144, 3), (INF, 6))),
    (512, ((4096, 2), (INF, 6))),
    (2048, ((2048, 2), (16384, 3), (INF, 6))),
    (4096, ((2048, 2), (4096, 5), (16384, 3), (INF, 6))),
    (INF, ((2048, 2), (16384, 5), (32768, 3), (INF, 6))),
)
# ompi_coll_tuned_allgather_intra_dec_fixed (s = one rank's contribution): 2 Bruck, 3 recursive
# doubling, 4 ring, 5 neighbor exchange; 2 ranks: two_proc.
ALLGATHER_TABLE = (
    (32, ((INF, 3),)),
    (64, ((1024, 3), (65536, 5), (INF, 4))),
    (128, ((512, 3), (65536, 5), (INF, 4))),
    (256, ((512, 3), (131072, 5), (524288, 4), (1048576, 5), (INF, 4))),
    (512, ((32, 3), (128, 2), (1024, 3), (131072, 5), (524288, 4), (1048576, 5), (INF, 4))),
    (1024, ((64, 3), (256, 2), (2048, 3), (INF, 5))),
    (2048, ((4, 3), (8, 2), (16, 3), (32, 2), (256, 3), (512, 2), (4096, 3), (INF, 5))),
    (4096, ((32, 2), (128, 3), (512, 2), (4096, 3), (INF, 5))),
    (INF, ((2, 3), (8, 2), (16, 3), (512, 2), (4096, 3), (INF, 5))),
)
ALLREDUCE_NAMES = {2: "reduce+bcast", 3: "recursive doubling", 4: "ring", 5: "segmented ring",
                   6: "Rabenseifner"}
ALLGATHER_NAMES = {2: "Bruck", 3: "recursive doubling", 4: "ring", 5: "neighbor exchange", 6: "two procs"}


def _decide(table, n: int, size: float) -> int:
    for n_bound, row in table:
        if n < n_bound:
            for size_bound, alg in row:
                if size < size_bound:
                    return alg
    raise AssertionError("unreachable: the last rows have no bound")


def allreduce_algorithm(n: int, payload: float) -> int:
    return _decide(ALLREDUCE_TABLE, n, payload)


def allgather_algorithm(n: int, share: float) -> int:
    return 6 if n == 2 else _decide(ALLGATHER_TABLE, n, share)


def _pow2_floor(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def allreduce_seconds(n: int, s: float, a: float, b: float) -> float:
    """One allreduce of s bytes at n ranks with the algorithm Open MPI's tuned component picks."""
    if n <= 1:
        return 0.0
    alg = allreduce_algorithm(n, s)
    p = _pow2_floor(n)
    log2p = p.bit_length() - 1
    if alg == 3:
        return (log2p + (2 if n != p else 0)) * (a + s / b)
    if alg == 6:
        return 2 * log2p * a + 2 * (p - 1) / p * s / b + ((2 * a + s / b) if n != p else 0.0)
    if alg == 2:
        return 2 * math.ceil(math.log2(n)) * (a + s / b)
    return 2 * (n - 1) * a + 2 * (n - 1) / n * s / b  # ring, segmented ring


def allgather_seconds(n: int, share: float, a: float, b: float) -> float:
    if n <= 1:
        return 0.0
    alg = allgather_algorithm(n, share)
    data = (n - 1) * share / b
    if alg == 6:
        return a + share / b
    if alg in (2, 3):
        return math.ceil(math.log2(n)) * a + data
    if alg == 5:
        return (n // 2) * a + data
    return (n - 1) * a + data


def collective_time(collective: str, n: int, payload: float, calls: float, link: Link) -> float:
    """Modeled seconds of `calls` calls moving `payload` bytes in all (this rank), at n ranks;
    each call carries payload / calls bytes."""
    if n <= 1 or calls <= 0:
        return 0.0
    a, b = link.alpha_s, link.beta_Bps
    per_call = payload / calls
    log2n = math.ceil(math.log2(n))
    if collective == "allreduce":
        return calls * allreduce_seconds(n, per_call, a, b)
    if collective in ("allgather", "allgatherv"):
        return calls * allgather_seconds(n, per_call, a, b)
    if collective == "gather":
        return calls * (n - 1) * (a + per_call / b)
    if collective in ("reduce_scatter", "alltoall"):
        return calls * ((n - 1) * a + (n - 1) / n * per_call / b)
    if collective == "broadcast":
        return calls * (log2n * a + per_call / b)
    if collective == "barrier":
        return calls * 2 * log2n * a
    if collective in ("send", "recv"):
        return calls * (a + per_call / b)
    return calls * allreduce_seconds(n, per_call, a, b)


def wire_bytes(collective: str, n: int, payload: float, calls: float) -> float:
    """Bytes one rank sends for `calls` calls of `payload` bytes in all, at n ranks (the count the
    ledger keeps: ring allreduce 2(N-1)/N S, allgather (N-1) s, broadcast (N-1)/N S). The
    projection uses the bandwidth-optimal counts whatever the algorithm: recursive doubling sends
    more (log2 N x S) for small messages, where bytes are not what costs."""
    if n <= 1:
        return 0.0
    if collective in ("allgather", "allgatherv", "gather"):
        return (n - 1) * payload
    if collective in ("broadcast", "reduce_scatter", "alltoall"):
        return (n - 1) / n * payload
    if collective in ("barrier",):
        return 0.0
    if collective in ("send", "recv"):
        return payload
    return 2 * (n - 1) / n * payload


@dataclass(frozen=True)
class Traffic:
    name: str
    collective: str  # a ledger collective name (allreduce, allgather, broadcast, ...)
    payload_per_step: float  # bytes this rank hands the collective, per training step
    calls_per_step: float


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
    """Per-step traffic of a run from its summary.json ledger (obs traffic left out), or None."""
    steps = run.steps
    ledger = run.summary.get("ledger")
    if steps <= 0 or not isinstance(ledger, list):
        return None
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


def _is_overlapped(run: RunData, t: Traffic) -> bool:
    return run.strategy == "allreduce" and t.collective == "allreduce" and t.name.endswith("/grad")


def bucket_pipeline_seconds(gradient_bytes: float, backward_s: float, n: int, link: Link) -> float:
    """Seconds from the start of backward until the last bucket's allreduce ends: buckets (first
    1 MiB, then 25 MiB) become ready in proportion to the bytes backward has produced; each
    allreduce starts when its bucket is ready and the previous one has finished."""
    sizes, left = [], gradient_bytes
    first = True
    while left > 0:
        take = min(left, DDP_FIRST_BUCKET_BYTES if first else DDP_BUCKET_BYTES)
        sizes.append(take)
        left -= take
        first = False
    done, end = 0.0, 0.0
    for s in sizes:
        done += s
        ready = backward_s * done / gradient_bytes
        end = max(end, ready) + allreduce_seconds(n, s, link.alpha_s, link.beta_Bps)
    return max(backward_s, end)


def step_seconds(run: RunData, n: int, link: Link, profile: list[Traffic] | None = None) -> float | None:
    """Modeled seconds per step at n ranks: measured compute plus modeled communication, the
    gradient allreduce overlapped with backward (bucket_pipeline_seconds)."""
    compute = run.compute_s_per_step
    profile = traffic_profile(run) if profile is None else profile
    if compute is None or profile is None:
        return None
    backward = BACKWARD_FRACTION * compute
    t = compute
    for tr in profile:
        if _is_overlapped(run, tr) and tr.calls_per_step >= 0.5:
            per_call = tr.payload_per_step / tr.calls_per_step
            t += tr.calls_per_step * (bucket_pipeline_seconds(per_call, backward, n, link) - backward)
        else:
            t += collective_time(tr.collective, n, tr.payload_per_step, tr.calls_per_step, link)
    return t


def comm_seconds_per_step(profile: list[Traffic], n: int, link: Link) -> float:
    """Modeled communication seconds per step, no overlap (what the trainer's modeled_comm_s
    counts: every call at its mean payload)."""
    return sum(collective_time(t.collective, n, t.payload_per_step, t.calls_per_step, link)
               for t in profile)


def wire_bytes_per_step(profile: list[Traffic], n: int) -> float:
    return sum(wire_bytes(t.collective, n, t.payload_per_step, t.calls_per_step) for t in profile)


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


@dataclass(frozen=True)
class Projection:
    steps_to_target: float
    step_s: dict          # n -> modeled seconds per step
    time_to_target_s: dict  # n -> steps_to_target x step_s
    bytes_to_target: dict   # n -> wire bytes per rank to target


def project(run: RunData, steps_to_target: float | None, link: Link,
            ranks=PROJECTED_RANKS) -> tuple[Projection | None, str]:
    """Modeled time and bytes to target at each rank count, or (None, why not)."""
    if steps_to_target is None:
        return None, "target not reached"
    if run.compute_s_per_step is None:
        return None, "no compute time per step"
    profile = traffic_profile(run)
    if profile is None:
        return None, "no byte ledger in summary.json"
    step = {n: step_seconds(run, n, link, profile) for n in ranks}
    return Projection(steps_to_target, step, {n: steps_to_target * step[n] for n in ranks},
                      {n: steps_to_target * wire_bytes_per_step(profile, n) for n in ranks}), ""


def breakeven_gbps(run: RunData, steps: float, base: RunData, base_steps: float, n: int,
                   alpha_s: float) -> tuple[str, float | None]:
    """The link bandwidth below which `run` reaches the target sooner than `base` (the allreduce
    ceiling) at n ranks and latency alpha_s: ("below", X Gb/s), ("always", None) when it is
    sooner at every bandwidth from 0.01 Gb/s to 10 Tb/s, ("never", None) when at none."""
    p_run, p_base = traffic_profile(run), traffic_profile(base)
    if p_run is None or p_base is None or run.compute_s_per_step is None or base.compute_s_per_step is None:
        return "n/a", None

    def gain(gbps: float) -> float:
        link = Link("x", alpha_s, gbps * 1e9 / 8)
        return base_steps * step_seconds(base, n, link, p_base) - steps * step_seconds(run, n, link, p_run)

    grid = [10 ** (k / 8) for k in range(-16, 33)]  # 0.01 .. 10,000 Gb/s
    wins = [gain(g) > 0 for g in grid]
    if all(wins):
        return "always", None
    if not wins[0]:
        return "never", None
    i = wins.index(False)
    lo, hi = grid[i - 1], grid[i]
    for _ in range(50):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if gain(mid) > 0 else (lo, mid)
    return "below", math.sqrt(lo * hi)
