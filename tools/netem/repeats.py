#!/usr/bin/python3
"""Medians over repeated tools/netem/model_check.sh runs (one run per row is within the noise of
a loaded 2-core machine: the same row moved by 15 points between rounds).

  tools/netem/repeats.py OUT1 OUT2 OUT3 [--target 0.25]

Per profile, rank count and strategy: the median measured and modeled communication seconds per
step, the median of the runs' errors with their range, and whether the median error is within the
target; then, where the OUTs hold a ttt/ folder, the median time to target per strategy and both
rankings of the medians.
"""
import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compare"))
from calibration import fmt_s  # noqa: E402  (the calibration report's own format)


def parse_s(text: str) -> float:
    value, unit = text.strip().split()
    return float(value) * (1e-3 if unit == "ms" else 1.0)


def matrix(outs: list[Path], target: float) -> list[str]:
    cells: dict[tuple[str, str], list[dict]] = {}
    for out in outs:
        for rows_file in sorted(out.glob("*-n*/calibration_rows.json")):
            for r in json.loads(rows_file.read_text()):
                cells.setdefault((rows_file.parent.name, r["strategy"]), []).append(r)
    if not cells:
        return []
    lines = ["| link | strategy | runs | measured (median) | modeled (median) | error: median [min, max] | within target |",
             "|---|---|---:|---:|---:|---|---|"]
    met = held = 0
    for (link, strategy), rs in sorted(cells.items()):
        errors = [r["error"] for r in rs if r["error"] is not None]
        bound = all(r["bandwidth_bound"] for r in rs)
        med = statistics.median(errors) if errors else None
        verdict = "(latency)" if not bound else ("yes" if med is not None and abs(med) <= target else "no")
        if bound and med is not None:
            held += 1
            met += abs(med) <= target
        lines.append(f"| {link} | {strategy} | {len(rs)} | {fmt_s(statistics.median(r['measured_s_per_step'] for r in rs))} | "
                     f"{fmt_s(statistics.median(r['modeled_s_per_step'] for r in rs))} | "
                     + (f"{med:+.0%} [{min(errors):+.0%}, {max(errors):+.0%}]" if errors else "-") + f" | {verdict} |")
    lines += ["", f"Bandwidth-bound cells within {target:.0%} by median error: {met} of {held}."]
    return lines


ROW = re.compile(r"^\| (?P<label>[^|]+) \| (?P<steps>[\d.]+) \| (?P<meas>[^|]+) \| (?P<mod>[^|]+) \|")


def ttt(outs: list[Path]) -> list[str]:
    runs: dict[str, list[tuple[float, float, float]]] = {}
    for out in outs:
        md = out / "ttt" / "calibration.md"
        if not md.exists():
            continue
        section = md.read_text().split("### Time to", 1)
        for line in section[1].splitlines() if len(section) == 2 else []:
            m = ROW.match(line)
            if m and m["label"].strip() != "Run":
                runs.setdefault(m["label"].strip(), []).append((float(m["steps"]), parse_s(m["meas"]), parse_s(m["mod"])))
    if not runs:
        return []
    med = {k: (statistics.median(v[0] for v in vs), statistics.median(v[1] for v in vs), statistics.median(v[2] for v in vs),
               len(vs)) for k, vs in runs.items()}
    measured_order = sorted(med, key=lambda k: med[k][1])
    modeled_order = sorted(med, key=lambda k: med[k][2])
    lines = ["| strategy | runs | steps to target (median) | measured (median) | modeled (median) | measured rank | modeled rank |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for k in measured_order:
        steps, meas, mod, n = med[k]
        lines.append(f"| {k} | {n} | {steps:g} | {fmt_s(meas)} | {fmt_s(mod)} | {measured_order.index(k) + 1} | "
                     f"{modeled_order.index(k) + 1} |")
    lines += ["", "Same order of the medians: " + ("**yes**" if measured_order == modeled_order else "**no**")]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outs", nargs="+", type=Path, help="model_check.sh OUT folders")
    ap.add_argument("--target", type=float, default=0.25, help="allowed |error| (default 0.25)")
    args = ap.parse_args()
    missing = [str(o) for o in args.outs if not o.is_dir()]
    if missing:
        print(f"repeats.py: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    lines = matrix(args.outs, args.target)
    if not lines:
        print("repeats.py: no */calibration_rows.json under the folders given", file=sys.stderr)
        return 1
    print("\n".join(lines + [""] + ttt(args.outs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
