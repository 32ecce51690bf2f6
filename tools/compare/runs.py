"""Reads one lowsync run folder (metrics.csv, summary.json, config.toml) into a RunData and derives
what the comparison needs: the quality metric (test accuracy, or validation loss for the gpt
workload), the first evaluation that reaches a target, the bytes and seconds spent to get there,
the run's status (ok, diverged, stopped, partial) and a label naming strategy, knob, lr, precision
and optimizer. Optional fields of older runs may be missing; every derived value is then None and
shows as "n/a" in the report.
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_COLUMNS = ("step",)
# Byte counts are cumulative and never negative; a log axis cannot draw a negative one.
BYTE_COLUMNS = ("bytes_sent", "payload_bytes")
BYTE_SUMMARY_KEYS = ("bytes_sent_per_rank", "bytes_sent_max_rank", "payload_bytes_per_rank",
                     "monitor_bytes", "sync_bytes")
# Config keys that never distinguish two runs for a reader (paths, output, watchdogs).
IGNORED_CONFIG_KEYS = {"data.dir", "checkpoint.dir", "checkpoint.every", "checkpoint.every_seconds",
                       "checkpoint.keep", "log.every", "log.progress", "comm.timeout_seconds",
                       "sync.check_every", "eval.batch", "train.max_seconds", "train.threads",
                       "net.alpha_us", "net.beta_gbps"}
# Each strategy's own knob (config key, short name in labels); ALGORITHMS.md section 9.
KNOBS = {"periodic": ("sync.period", "H"), "diloco": ("sync.period", "H"),
         "fda": ("sync.fda.threshold", "Theta"), "demo": ("optim.demo.topk", "topk"),
         "powersgd": ("sync.powersgd.rank", "rank")}
# Columns whose non-finite values mean the run diverged (the trainer logs nan, inf).
DIVERGENCE_COLUMNS = ("loss", "test_loss")
DIVERGED_FACTOR = 10.0  # a training loss 10x its first logged value


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "n/a"
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    v, i = float(b), 0
    while abs(v) >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    if i == 0:
        return f"{int(round(v))} B"
    return f"{v:.2f} {units[i]}" if abs(v) < 10 else (
        f"{v:.1f} {units[i]}" if abs(v) < 100 else f"{v:.0f} {units[i]}")


class RunError(Exception):
    """A missing or corrupt run folder; printed as one line."""


def _number(text: str, where: str) -> float | None:
    text = text.strip()
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise RunError(f"{where}: '{text}' is not a number") from None
    # The trainer logs nan when there is no value (a diverged loss, no evaluation yet): a
    # non-finite cell is missing, never a number to take a minimum of or to plot.
    return value if math.isfinite(value) else None


def flatten(table: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _nonfinite(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def read_metrics(path: Path) -> tuple[list[str], list[dict], bool]:
    """(header, rows sorted by step, whether a loss cell was non-finite)."""
    nonfinite = False
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise RunError(f"{path}: empty file (no header)") from None
            for col in REQUIRED_COLUMNS:
                if col not in header:
                    raise RunError(f"{path}: header has no '{col}' column: {','.join(header)[:80]}")
            rows = []
            for line_no, cells in enumerate(reader, start=2):
                if not cells or all(c.strip() == "" for c in cells):
                    continue
                if len(cells) > len(header):
                    raise RunError(f"{path}:{line_no}: {len(cells)} cells but {len(header)} columns")
                row = {h: _number(c, f"{path}:{line_no} column {h}") for h, c in zip(header, cells)}
                nonfinite = nonfinite or any(_nonfinite(c) for h, c in zip(header, cells)
                                             if h in DIVERGENCE_COLUMNS)
                for col in BYTE_COLUMNS:
                    if row.get(col) is not None and row[col] < 0:
                        raise RunError(f"{path}:{line_no}: {col} = {cells[header.index(col)].strip()} "
                                       "is negative (a byte count)")
                if row.get("step") is None:
                    raise RunError(f"{path}:{line_no}: empty step")
                rows.append(row)
    except FileNotFoundError:
        raise RunError(f"{path.parent}: not a run folder (no metrics.csv)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RunError(f"{path}: unreadable: {e}") from None
    if not rows:
        raise RunError(f"{path}: no data rows")
    rows.sort(key=lambda r: r["step"])
    return header, rows, nonfinite


def read_summary(path: Path) -> dict:
    try:
        with open(path) as f:
            summary = json.load(f)
    except FileNotFoundError:
        raise RunError(f"{path.parent}: not a finished run (no summary.json)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunError(f"{path}: corrupt JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(summary, dict):
        raise RunError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    for key in BYTE_SUMMARY_KEYS:
        v = _num(summary.get(key))
        if v is not None and v < 0:
            raise RunError(f"{path}: {key} = {summary[key]} is negative (a byte count)")
    return summary


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


@dataclass
class RunData:
    path: Path
    summary: dict
    header: list[str]
    rows: list[dict]
    config: dict = field(default_factory=dict)
    label: str = ""
    acc_scale: float = 1.0  # 0.01 when a run logs accuracy in percent
    nonfinite: bool = False  # a logged loss was nan or inf
    partial: bool = False    # metrics.csv without summary.json: killed or still running

    @staticmethod
    def load(path: Path, allow_partial: bool = False) -> "RunData":
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path}: no such run folder")
        partial = allow_partial and not (path / "summary.json").exists()
        summary = {} if partial else read_summary(path / "summary.json")
        header, rows, nonfinite = read_metrics(path / "metrics.csv")
        config = summary.get("config") if isinstance(summary.get("config"), dict) else None
        if config is None and (path / "config.toml").is_file():
            try:
                with open(path / "config.toml", "rb") as f:
                    config = tomllib.load(f)
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise RunError(f"{path / 'config.toml'}: corrupt TOML: {e}") from None
        run = RunData(path=path, summary=summary, header=header, rows=rows,
                      config=flatten(config or {}), nonfinite=nonfinite, partial=partial)
        accs = [r["test_acc"] for r in rows if r.get("test_acc") is not None]
        final = _num(summary.get("final_test_accuracy"))
        if final is not None:
            accs.append(final)
        if accs and max(accs) > 1.0:
            run.acc_scale = 0.01
        for key in ("final_loss", "final_test_loss", "final_val_loss"):
            v = summary.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
                run.nonfinite = True
        return run

    # --- identity -------------------------------------------------------------------------------
    def field_str(self, summary_key: str, config_key: str, default: str = "?") -> str:
        v = self.summary.get(summary_key, self.config.get(config_key))
        return str(v) if v is not None else default

    @property
    def strategy(self) -> str:
        return self.field_str("strategy", "sync.strategy", "allreduce")

    @property
    def arch(self) -> str:
        return self.field_str("arch", "model.arch", "mlp")

    @property
    def optimizer(self) -> str:
        if self.strategy == "demo":
            return "demo"
        return str(self.config.get("optim.name", "sgd"))

    @property
    def lr(self) -> float | None:
        return _num(self.config.get("optim.lr"))

    @property
    def seed(self) -> int | None:
        v = _num(self.config.get("train.seed"))
        return None if v is None else int(v)

    @property
    def knob(self) -> tuple[str, str] | None:
        """(short name, value) of the strategy's own knob, or None (none, allreduce)."""
        entry = KNOBS.get(self.strategy)
        if entry is None:
            return None
        key, short = entry
        v = self.config.get(key)
        if self.strategy == "fda" and (v is None or (_num(v) is not None and _num(v) < 0)):
            per = self.config.get("sync.fda.threshold_per_param")
            return ("Theta/d", f"{per:g}") if isinstance(per, (int, float)) else None
        if v is None:
            return None
        return short, (f"{v:g}" if isinstance(v, float) else str(v))

    @property
    def precision_compute(self) -> str:
        return self.field_str("precision_compute", "precision.compute", "fp32")

    @property
    def precision_wire(self) -> str:
        return self.field_str("precision_wire", "precision.wire", "fp32")

    @property
    def precision(self) -> str:
        c, w = self.precision_compute, self.precision_wire
        if self.strategy == "demo":
            w = str(self.config.get("optim.demo.value", "fp32"))
        return c if c == w else f"{c}/{w}"

    @property
    def partition(self) -> str:
        p = self.field_str("partition", "data.partition", "iid")
        alpha = self.config.get("data.alpha")
        if p in ("dirichlet", "by_source") and _num(alpha) is not None:
            return f"{p}({alpha:g})"
        return p

    @property
    def ranks(self) -> int | None:
        r = _num(self.summary.get("ranks"))
        return int(r) if r is not None and r >= 1 else None

    @property
    def steps(self) -> int:
        s = _num(self.summary.get("steps"))
        return int(s) if s is not None and s > 0 else int(self.rows[-1]["step"])

    @property
    def configured_steps(self) -> int | None:
        v = _num(self.config.get("train.steps"))
        return None if v is None else int(v)

    def base_label(self) -> str:
        """strategy[knob] lr precision optimizer: what a reader needs to tell two rows apart."""
        strategy = self.strategy
        knob = self.knob
        if knob is not None:
            strategy += f"({knob[0]}={knob[1]})"
        lr = f"lr={self.lr:g}" if self.lr is not None else "lr=?"
        return f"{strategy} {lr} {self.precision} {self.optimizer}"

    def setting_key(self) -> tuple:
        """Identical for runs that differ only in the seed (and output-only keys)."""
        keys = sorted(set(self.config) - IGNORED_CONFIG_KEYS - {"train.seed"})
        return tuple((k, repr(self.config.get(k))) for k in keys) + (("ranks", self.ranks),)

    # --- status ---------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """ok | diverged | stopped | partial. Only ok runs are ranked or move a target."""
        if self.diverged:
            return "diverged"
        if self.partial:
            return "partial"
        if self.summary.get("stopped_early") is True:
            return "stopped"
        want = self.configured_steps
        if want is not None and self.steps < want:
            return "partial"
        return "ok"

    @property
    def diverged(self) -> bool:
        """A non-finite loss, or a training loss above 10x its first logged value."""
        if self.nonfinite:
            return True
        losses = [r["loss"] for r in self.rows if r.get("loss") is not None and r["step"] > 0]
        return bool(losses) and losses[0] > 0 and max(losses) > DIVERGED_FACTOR * losses[0]

    # --- curves ---------------------------------------------------------------------------------
    def series(self, x: str, y: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for r in self.rows:
            if r.get(x) is not None and r.get(y) is not None:
                xs.append(r[x])
                ys.append(r[y] * (self.acc_scale if y == "test_acc" else 1.0))
        return xs, ys

    def eval_rows(self, metric: str = "accuracy") -> list[dict]:
        col = "test_acc" if metric == "accuracy" else "test_loss"
        return [r for r in self.rows if r.get(col) is not None]

    def last(self, column: str) -> float | None:
        for r in reversed(self.rows):
            if r.get(column) is not None:
                return r[column]
        return None

    # --- derived numbers ------------------------------------------------------------------------
    @property
    def final_accuracy(self) -> float | None:
        v = _num(self.summary.get("final_test_accuracy"))
        if v is None:
            v = _num(self.summary.get("final_val_accuracy"))
        if v is None:
            v = self.last("test_acc")
        return None if v is None else v * self.acc_scale

    @property
    def final_test_loss(self) -> float | None:
        for key in ("final_val_loss", "final_test_loss"):
            v = _num(self.summary.get(key))
            if v is not None:
                return v
        return self.last("test_loss")

    def final_quality(self, metric: str) -> float | None:
        return self.final_accuracy if metric == "accuracy" else self.final_test_loss

    def quality(self, row: dict, metric: str) -> float | None:
        if metric == "accuracy":
            v = row.get("test_acc")
            return None if v is None else v * self.acc_scale
        return row.get("test_loss")

    @property
    def final_loss(self) -> float | None:
        v = _num(self.summary.get("final_loss"))
        return v if v is not None else self.last("loss")

    def target_row(self, target: float, metric: str = "accuracy") -> dict | None:
        """The first evaluation whose quality reaches target (accuracy >=, loss <=)."""
        for r in self.eval_rows(metric):
            q = self.quality(r, metric)
            if metric == "accuracy" and q >= target - 1e-12:
                return r
            if metric == "loss" and q <= target + 1e-12:
                return r
        return None

    def time_to_target(self, target: float, metric: str = "accuracy") -> float | None:
        r = self.target_row(target, metric)
        return None if r is None else r.get("wall_s")

    def bytes_to_target(self, target: float, metric: str = "accuracy") -> float | None:
        r = self.target_row(target, metric)
        return None if r is None else r.get("bytes_sent")

    def steps_to_target(self, target: float, metric: str = "accuracy") -> float | None:
        r = self.target_row(target, metric)
        return None if r is None else r["step"]

    def summary_or_last(self, summary_key: str, column: str) -> float | None:
        v = _num(self.summary.get(summary_key))
        return v if v is not None else self.last(column)

    @property
    def total_bytes(self) -> float | None:
        return self.summary_or_last("bytes_sent_per_rank", "bytes_sent")

    @property
    def total_payload(self) -> float | None:
        v = _num(self.summary.get("payload_bytes_per_rank"))
        return v if v is not None else self.summary_or_last("payload_bytes", "payload_bytes")

    @property
    def syncs(self) -> float | None:
        return self.summary_or_last("syncs", "syncs")

    @property
    def samples_per_s(self) -> float | None:
        return self.summary_or_last("samples_per_s", "samples_per_s")

    @property
    def wall_s(self) -> float | None:
        return self.summary_or_last("wall_s", "wall_s")

    @property
    def peak_rss(self) -> float | None:
        return _num(self.summary.get("peak_rss_bytes"))

    @property
    def train_state(self) -> float | None:
        return _num(self.summary.get("train_state_bytes"))

    @property
    def bytes_per_step(self) -> float | None:
        b = self.total_bytes
        return None if b is None or self.steps <= 0 else b / self.steps

    @property
    def compute_s_per_step(self) -> float | None:
        v = _num(self.summary.get("compute_s_per_step"))
        if v is not None:
            return v
        steps = self.steps
        c = self.summary_or_last("compute_s", "compute_s")
        if c is not None and steps > 0:
            return c / steps
        w, m = self.wall_s, self.summary_or_last("comm_s", "comm_s")
        if w is not None and m is not None and steps > 0:
            return max(w - m, 0.0) / steps
        return None


def discover(paths: list[str]) -> tuple[list[Path], list[Path], list[str]]:
    """Run folders named on the command line; a folder without summary.json or metrics.csv whose
    subfolders are runs (a sweep's output, searched two levels deep) stands for those. Returns
    (finished runs, partial runs: metrics.csv without summary.json, warnings)."""
    found, partial, warnings = [], [], []

    def runs_below(d: Path, depth: int) -> list[Path]:
        out = []
        for sub in sorted(x for x in d.iterdir() if x.is_dir()):
            if (sub / "metrics.csv").exists():
                out.append(sub)
            elif depth > 1:
                out += runs_below(sub, depth - 1)
        return out

    for p in map(Path, paths):
        if not p.exists():
            raise RunError(f"{p}: no such run folder")
        if not p.is_dir():
            raise RunError(f"{p}: not a folder")
        if (p / "summary.json").exists() or (p / "metrics.csv").exists():
            (found if (p / "summary.json").exists() else partial).append(p)
            continue
        subs = runs_below(p, 2)
        if not subs:
            raise RunError(f"{p}: not a run folder (no summary.json or metrics.csv, no runs inside)")
        for d in subs:
            if (d / "summary.json").exists():
                found.append(d)
            else:
                partial.append(d)
                warnings.append(f"{d}: unfinished (no summary.json): labelled partial, not ranked")
    return found, partial, warnings


def assign_labels(runs: list[RunData]) -> None:
    """Readable, unique labels: strategy(knob) lr precision optimizer, plus the seed when runs of
    one setting differ only in it, plus other config keys that tell apart runs sharing a label,
    plus the folder name as a last resort; a run that is not ok carries its status."""
    # A partial run has no summary.json: its partition and rank count are unknown, not different.
    partitions = {r.partition for r in runs if not r.partial}
    rank_counts = {r.ranks for r in runs if not r.partial}
    groups: dict[str, list[RunData]] = {}
    for r in runs:
        base = r.base_label()
        if len(partitions) > 1:
            base += f" {r.partition}"
        if len(rank_counts) > 1:
            base += f" n={r.ranks if r.ranks is not None else '?'}"
        groups.setdefault(base, []).append(r)
    for base, group in groups.items():
        if len(group) == 1:
            group[0].label = base
            continue
        keys = sorted({k for r in group for k in r.config} - IGNORED_CONFIG_KEYS)
        differing = [k for k in keys if len({repr(r.config.get(k)) for r in group}) > 1]
        short = [k.rsplit(".", 1)[-1] for k in differing]
        names = [s if short.count(s) == 1 else k for s, k in zip(short, differing)]
        for r in group:
            extra = " ".join(f"{n}={r.config.get(k)}" for n, k in zip(names[:3], differing[:3]))
            r.label = f"{base} {extra}".strip()
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = f"{r.label} [{r.path.name}]"
    for r in runs:
        if r.status != "ok":
            r.label = f"{r.label} [{r.status.upper()}]"
