"""Pool the per-round ratios of several load-test runs of the same protocol into one table.

    .venv/bin/python -m bench.pool_runs bench/results/RUN_C bench/results/RUN_D [--out pooled.md]

A run's `ratios.csv` keeps every per-round ratio (PARA/base output tok/s, TTFT p50, engine
timings, ...). Rounds of runs that used the same settings are exchangeable measurements, so the
pooled median over all their rounds is a better estimate than any one run's median; this states
the pooled median [min-max], a distribution-free interval of that median (order statistics of the
rounds, `protocol.median_interval`, with its exact coverage) and the number of rounds next to each
run's own median. Runs whose
settings differ (mode, dtype, requests per level, systems, levels, server environment; read from each run's
`rounds.csv` and report header) are refused: pooling them would mix two experiments.

Which runs to pool should be decided before the runs are seen (the README says which ones were
and why); this tool only does the arithmetic.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from .protocol import median_interval


class IncompatibleRuns(ValueError):
    pass


@dataclass(frozen=True)
class RunRatios:
    name: str
    settings: dict  # what must agree between pooled runs
    per_round: dict  # (ratio, concurrency) -> [values in round order]


def _settings(run: Path) -> dict:
    rows = [r for r in csv.DictReader((run / "rounds.csv").open()) if r.get("warmup") == "0"]
    if not rows:
        raise IncompatibleRuns(f"{run}: rounds.csv has no measured phase")
    requests = sorted({(int(r["concurrency"]), int(r["requests"])) for r in rows})
    header = (run / "report.md").read_text().split("## Systems")[0] if (run / "report.md").exists() else ""
    dtype = re.search(r"--dtype (\w+)", header)
    mode = re.search(r"\((\w+) mode", header)
    env = re.search(r"engine flags \(all systems\): `[^`]*`, (.*)", header)  # the servers' environment
    return {
        "systems": sorted({r["system"] for r in rows}),
        "requests per level": requests,
        "dtype": dtype.group(1) if dtype else None,
        "mode": mode.group(1) if mode else None,
        "server environment": env.group(1).strip() if env else None,
    }


def read_run(run: Path) -> RunRatios:
    per_round: dict = {}
    for row in csv.DictReader((run / "ratios.csv").open()):
        values = [float(part.split("=", 1)[1]) for part in row["per_round"].split(";") if "=" in part]
        per_round[(row["ratio"], int(row["concurrency"]))] = values
    return RunRatios(run.name, _settings(run), per_round)


def pool(runs: list[RunRatios], confidence: float = 0.90) -> list[dict]:
    """One row per (ratio, concurrency) present in every run: pooled median, min, max, the
    median's `interval` (at least `confidence` where the rounds allow), rounds, and each run's
    own median. Raises IncompatibleRuns if the runs' settings differ."""
    if not runs:
        raise IncompatibleRuns("no run given")
    first = runs[0]
    for other in runs[1:]:
        diff = {k: (first.settings[k], other.settings.get(k)) for k in first.settings
                if first.settings[k] != other.settings.get(k)}
        if diff:
            raise IncompatibleRuns(f"{other.name} differs from {first.name} in {diff}; "
                                   "pool only repeats of one protocol")
    keys = [k for k in first.per_round if all(k in r.per_round for r in runs)]
    out = []
    for ratio, level in keys:
        values = [v for r in runs for v in r.per_round[(ratio, level)]]
        if not values:
            continue
        out.append({"ratio": ratio, "concurrency": level, "median": statistics.median(values),
                    "min": min(values), "max": max(values), "rounds": len(values),
                    "interval": median_interval(values, confidence),
                    "per_run": [statistics.median(r.per_round[(ratio, level)]) if r.per_round[(ratio, level)] else None
                                for r in runs]})
    return out


def markdown(runs: list[RunRatios], rows: list[dict]) -> str:
    names = [r.name for r in runs]
    lines = ["| ratio | c | pooled median [min-max] | interval of the median (coverage) | rounds | "
             + " | ".join(names) + " |",
             "|---|---|---|---|---|" + "---|" * len(names)]
    for row in rows:
        per = " | ".join("" if v is None else f"{v:.3f}" for v in row["per_run"])
        ci = row["interval"]
        lines.append(f"| {row['ratio']} | {row['concurrency']} | **{row['median']:.3f}** "
                     f"[{row['min']:.3f}-{row['max']:.3f}] | {ci.lo:.3f}-{ci.hi:.3f} ({ci.coverage:.0%}) | "
                     f"{row['rounds']} | {per} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (each with ratios.csv and rounds.csv)")
    p.add_argument("--out", type=Path, default=None, help="write the table here too")
    p.add_argument("--confidence", type=float, default=0.90,
                   help="least coverage of the median's interval, where the number of rounds allows (default 0.90)")
    args = p.parse_args(argv)
    try:
        runs = [read_run(r) for r in args.runs]
        table = markdown(runs, pool(runs, args.confidence))
    except IncompatibleRuns as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table, end="")
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
