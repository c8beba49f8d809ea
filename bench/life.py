"""One server's life in a served benchmark, the same for every scenario.

Start `vllm serve` (nothing else is up: the protocol runs one server at a time), warm it up
(one request per warm-up model, then a short unmeasured load at every level, recorded with
warmup=True and never summarized), run each slot's measured load phases, stop it (also on
errors). Every measured phase gets the client's latencies (`locust_runner.summarize`), the
engine's own timings (`prometheus.phase_metrics`, scraped before and after) and the CPU time of
each server process (`process_cpu`). A scenario adds what only it measures through `PhaseHooks`:
the fleet's cold/warm split and adapter-memory scrape, the served profile's `perf` recording.

Runs in: the benchmark driver, never in a server.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from testkit.serve_process import VLLMServer

from . import process_cpu as PC
from . import prometheus as PM
from . import protocol as P
from .locust_runner import LoadSpec, run_locust, summarize


@dataclass
class Server:
    """What one system's server is started with."""

    system: str
    flags: list[str]  # every `vllm serve` flag after the model path
    env: dict[str, str] = field(default_factory=dict)
    warm_models: tuple[str, ...] = ()  # one request each before the warm-up load


class PhaseHooks:
    """A scenario's additions to every server life (the defaults add nothing)."""

    def start(self, srv: VLLMServer) -> None:
        """Once per life, after the warm-up and before the first measured phase."""

    def around(self, slot: P.Slot, concurrency: int):
        """A context manager around each measured load phase (and nothing else)."""
        return contextlib.nullcontext()

    def after(self, srv: VLLMServer, slot: P.Slot, concurrency: int, records: Path, metrics: dict) -> None:
        """Add to `metrics` (the phase's measurement) once its load has finished."""

    def describe(self, metrics: dict) -> str:
        """Extra words for the phase's log line."""
        return ""


# (concurrency, round, warmup, requests or None) -> the phase's load
LoadFor = Callable[[int, int, bool, "int | None"], LoadSpec]


def run_life(index: int, life: list[P.Slot], server: Server, base: Path, plan, load: LoadFor, out: Path,
             timeline: list[dict], t0: float, hooks: PhaseHooks | None = None) -> list[P.Measurement]:
    """Start one server, warm it up, run the slots of `life` (the slots sharing this server), stop it.

    `plan` gives `levels`, `warmup_requests`, `max_tokens`, `startup_timeout_s`; server logs go to
    `out/logs`, Locust's per-request records to `out/locust` (raw: not for committing)."""
    hooks = hooks or PhaseHooks()
    system = server.system
    measured: list[P.Measurement] = []
    entry = {"life": index, "system": system, "slots": " ".join(str(s.index) for s in life),
             "rounds": " ".join(str(s.round) for s in life), "start_s": round(time.monotonic() - t0, 3)}
    log(f"[{system}] server {index}: starting vllm serve for slot(s) {entry['slots']} (round(s) {entry['rounds']})")
    srv = VLLMServer(base, server.flags, out / "logs" / f"{system}_server{index}.log", env=dict(server.env),
                     startup_timeout=plan.startup_timeout_s)
    try:
        srv.start()
        entry["healthy_s"], entry["startup_s"] = round(time.monotonic() - t0, 3), round(srv.startup_s, 1)
        log(f"[{system}] healthy after {srv.startup_s:.0f}s at {srv.url}; warming up")
        srv.warm_up(list(server.warm_models))
        first = life[0]
        for c in plan.levels:
            n = plan.warmup_requests if plan.warmup_requests is not None else max(2, c)
            if n:
                rec = run_locust(srv.url, load(c, first.round, True, n),
                                 out / "locust" / f"{system}_s{first.index}_warmup_c{c}")
                measured.append(P.Measurement(first.round, system, c, summarize(rec, plan.max_tokens), warmup=True,
                                              slot=first.index, fresh=True))
        hooks.start(srv)
        for slot in life:
            for c in plan.levels:
                tag = f"{system}_r{slot.round}_c{c}" if not slot.warmup else f"{system}_w{-slot.round}_c{c}"
                before, cpu_before = PM.scrape(srv.url), PC.snapshot(srv.proc.pid)
                with hooks.around(slot, c):
                    rec = run_locust(srv.url, load(c, slot.round, False, None), out / "locust" / tag)
                cpu_after = PC.snapshot(srv.proc.pid)
                metrics = {**summarize(rec, plan.max_tokens), **PM.phase_metrics(before, PM.scrape(srv.url))}
                tokens = (metrics.get("output_tokens_per_s") or 0.0) * (metrics.get("wall_s") or 0.0)
                metrics.update(PC.phase_cpu(cpu_before, cpu_after, tokens))
                hooks.after(srv, slot, c, rec, metrics)
                measured.append(P.Measurement(slot.round, system, c, metrics, warmup=slot.warmup, slot=slot.index,
                                              fresh=slot.fresh))
                log(f"[{system}] {'warm-up ' if slot.warmup else ''}round {slot.round} c={c}: "
                    f"{metrics['requests']} requests, {metrics['failures']} failed, "
                    f"{metrics['output_tokens_per_s']:.1f} output tok/s, TTFT p50 {ms(metrics['ttft_p50'])}, "
                    f"ITL p50 {ms(metrics.get('itl_p50'))}{hooks.describe(metrics)}")
    finally:
        srv.stop()
        entry["stop_s"] = round(time.monotonic() - t0, 3)
        timeline.append(entry)
    return measured


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def log(msg: str) -> None:
    print(f"[loadtest {time.strftime('%H:%M:%S')}] {msg}", flush=True)
