"""Run `locust --headless` on bench/locustfile.py and turn its records into metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .protocol import percentile

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


@dataclass(frozen=True)
class LoadSpec:
    concurrency: int
    total_requests: int
    max_tokens: int
    prompt_words: int
    models: tuple[str, ...]
    distribution: str = "uniform"
    zipf_exponent: float = 1.0
    seed: int = 0
    beam_search: bool = False
    run_time_s: int = 600  # safety limit; the run normally ends when total_requests are done


def locust_command() -> list[str]:
    exe = Path(sys.executable).with_name("locust")
    return [str(exe)] if exe.exists() else [shutil.which("locust") or "locust"]


def run_locust(host: str, spec: LoadSpec, prefix: Path) -> Path:
    """Run one load phase; Locust CSVs go to `<prefix>_*.csv`, per-request records to `<prefix>_records.jsonl`."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    records = Path(f"{prefix}_records.jsonl")
    cmd = locust_command() + [
        "-f", str(LOCUSTFILE), "--headless", "--only-summary", "--loglevel", "WARNING",
        "-u", str(spec.concurrency), "-r", str(spec.concurrency), "--host", host,
        "--run-time", f"{spec.run_time_s}s", "--stop-timeout", "60", "--csv", str(prefix),
        "--models", ",".join(spec.models), "--distribution", spec.distribution,
        "--zipf-exponent", str(spec.zipf_exponent), "--prompt-words", str(spec.prompt_words),
        "--max-tokens", str(spec.max_tokens), "--total-requests", str(spec.total_requests),
        "--traffic-seed", str(spec.seed), "--records-file", str(records),
    ] + (["--beam-search"] if spec.beam_search else [])
    with open(f"{prefix}_locust.log", "w") as log:
        # exit code 1 only means "some requests failed": the records say which
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=spec.run_time_s + 180)
    if proc.returncode not in (0, 1) or not records.exists():
        raise RuntimeError(f"locust exited with {proc.returncode}; see {prefix}_locust.log")
    return records


def summarize(records_file: Path, max_tokens: int) -> dict:
    """Throughput and latency percentiles (ms) of one load phase from its per-request records."""
    recs = [json.loads(line) for line in records_file.read_text().splitlines() if line.strip()]
    ok = [r for r in recs if r["error"] is None]
    wall = (max(r["end"] for r in recs) - min(r["start"] for r in recs)) if recs else 0.0
    ms = lambda xs: [x * 1000 for x in xs]  # noqa: E731
    ttft = ms([r["ttft"] for r in ok if r["ttft"] is not None])
    itl = ms([gap for r in ok for gap in r["itl"]])
    # time per output token after the first, one value per request (smooths bursty delivery)
    tpot = ms([(r["latency"] - r["ttft"]) / (r["tokens"] - 1)
               for r in ok if r["ttft"] is not None and r["tokens"] > 1])
    out_tokens = sum(r["tokens"] for r in ok)
    return {
        "requests": len(recs),
        "failures": len(recs) - len(ok),
        "output_tokens": out_tokens,
        "expected_output_tokens": len(ok) * max_tokens,
        "wall_s": wall,
        "output_tokens_per_s": out_tokens / wall if wall > 0 else 0.0,
        "requests_per_s": len(ok) / wall if wall > 0 else 0.0,
        "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
        "itl_p50": percentile(itl, 50), "itl_p99": percentile(itl, 99),
        "tpot_p50": percentile(tpot, 50),
        "latency_p50": percentile(ms([r["latency"] for r in ok]), 50),
        "errors": sorted({r["error"] for r in recs if r["error"]})[:5],
    }
