"""Reads one lowsync run folder (metrics.csv, summary.json, config.toml) into a RunData and derives
what the comparison needs: final accuracy, the first evaluation at or above a target accuracy, and
the bytes and seconds spent to get there. Optional fields of older runs may be missing; every
derived value is then None and shows as "n/a" in the report.
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
                       "sync.check_every", "eval.batch", "train.max_seconds", "train.threads"}


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


def read_metrics(path: Path) -> tuple[list[str], list[dict]]:
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
    return header, rows


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

    @staticmethod
    def load(path: Path) -> "RunData":
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path}: no such run folder")
        summary = read_summary(path / "summary.json")
        header, rows = read_metrics(path / "metrics.csv")
        config = summary.get("config") if isinstance(summary.get("config"), dict) else None
        if config is None and (path / "config.toml").is_file():
            try:
                with open(path / "config.toml", "rb") as f:
                    config = tomllib.load(f)
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise RunError(f"{path / 'config.toml'}: corrupt TOML: {e}") from None
        run = RunData(path=path, summary=summary, header=header, rows=rows,
                      config=flatten(config or {}))
        accs = [r["test_acc"] for r in rows if r.get("test_acc") is not None]
        final = _num(summary.get("final_test_accuracy"))
        if final is not None:
            accs.append(final)
        if accs and max(accs) > 1.0:
            run.acc_scale = 0.01
        return run

    # --- identity -------------------------------------------------------------------------------
    def field_str(self, summary_key: str, config_key: str, default: str = "?") -> str:
        v = self.summary.get(summary_key, self.config.get(config_key))
        return str(v) if v is not None else default

    @property
    def strategy(self) -> str:
        return self.field_str("strategy", "sync.strategy")

    @property
    def precision_compute(self) -> str:
        return self.field_str("precision_compute", "precision.compute", "fp32")

    @property
    def precision_wire(self) -> str:
        return self.field_str("precision_wire", "precision.wire", "fp32")

    @property
    def precision(self) -> str:
        c, w = self.precision_compute, self.precision_wire
        return c if c == w else f"{c}/{w}"

    @property
    def partition(self) -> str:
        p = self.field_str("partition", "data.partition", "iid")
        alpha = self.config.get("data.alpha")
        if p == "dirichlet" and _num(alpha) is not None:
            return f"dirichlet({alpha:g})"
        return p

    @property
    def ranks(self) -> int | None:
        r = _num(self.summary.get("ranks"))
        return int(r) if r is not None and r >= 1 else None

    @property
    def steps(self) -> int:
        s = _num(self.summary.get("steps"))
        return int(s) if s is not None and s > 0 else int(self.rows[-1]["step"])

    def base_label(self) -> str:
        strategy = self.strategy
        if strategy == "periodic" and self.config.get("sync.period") is not None:
            strategy = f"periodic(H={self.config['sync.period']})"
        elif strategy == "fda" and self.config.get("sync.fda.estimator") is not None:
            strategy = f"fda({self.config['sync.fda.estimator']})"
        elif strategy == "powersgd" and self.config.get("sync.powersgd.rank") is not None:
            strategy = f"powersgd(r={self.config['sync.powersgd.rank']})"
        ranks = self.ranks if self.ranks is not None else "?"
        return f"{strategy} {self.precision} {self.partition} n={ranks}"

    # --- curves ---------------------------------------------------------------------------------
    def series(self, x: str, y: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for r in self.rows:
            if r.get(x) is not None and r.get(y) is not None:
                xs.append(r[x])
                ys.append(r[y] * (self.acc_scale if y == "test_acc" else 1.0))
        return xs, ys

    def eval_rows(self) -> list[dict]:
        return [r for r in self.rows if r.get("test_acc") is not None]

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
            v = self.last("test_acc")
        return None if v is None else v * self.acc_scale

    @property
    def final_loss(self) -> float | None:
        v = _num(self.summary.get("final_loss"))
        return v if v is not None else self.last("loss")

    def target_row(self, target: float) -> dict | None:
        """The first evaluation whose test accuracy is at least target (a fraction)."""
        for r in self.eval_rows():
            if r["test_acc"] * self.acc_scale >= target - 1e-12:
                return r
        return None

    def time_to_target(self, target: float) -> float | None:
        r = self.target_row(target)
        return None if r is None else r.get("wall_s")

    def bytes_to_target(self, target: float) -> float | None:
        r = self.target_row(target)
        return None if r is None else r.get("bytes_sent")

    def steps_to_target(self, target: float) -> float | None:
        r = self.target_row(target)
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


def discover(paths: list[str]) -> tuple[list[Path], list[str]]:
    """Run folders named on the command line; a folder without summary.json or metrics.csv whose
    subfolders are runs (a sweep's output) stands for those. Returns (runs, warnings)."""
    found, warnings = [], []
    for p in map(Path, paths):
        if not p.exists():
            raise RunError(f"{p}: no such run folder")
        if not p.is_dir():
            raise RunError(f"{p}: not a folder")
        if (p / "summary.json").exists() or (p / "metrics.csv").exists():
            found.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir() and (d / "metrics.csv").exists())
        if not subs:
            raise RunError(f"{p}: not a run folder (no summary.json or metrics.csv, no runs inside)")
        for d in subs:
            if (d / "summary.json").exists():
                found.append(d)
            else:
                warnings.append(f"{d}: unfinished (no summary.json), left out")
    return found, warnings


def assign_labels(runs: list[RunData]) -> None:
    """Readable, unique labels: the base label, plus the config keys that tell apart runs sharing
    it, plus the folder name as a last resort."""
    groups: dict[str, list[RunData]] = {}
    for r in runs:
        groups.setdefault(r.base_label(), []).append(r)
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
