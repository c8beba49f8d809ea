"""Fleet scenario: a thousand tenants' adapters loaded on first use, PARA vs vLLM multi-LoRA.

    python -m bench.compare --scenario fleet                          # 1,000 adapters each, full-mode model
    python -m bench.compare --scenario fleet --fleet-adapters 200     # a reduced fleet
    python -m bench.compare --scenario fleet --mode small --fleet-adapters 20 --requests 8   # smoke test

Both systems serve the same base model and N adapters of (nearly) equal trainable
parameters from a directory, loading each adapter on its first request and keeping
a bounded least-recently-used host cache:

    para  vllm serve BASE --enable-para --para-adapter-dir DIR --max-cpu-para-adapters 64 --max-para-adapters 8
          --max-para-rank 12
    lora  vllm serve BASE --enable-lora --max-loras 8 --max-cpu-loras 64 --max-lora-rank R
          with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 VLLM_LORA_RESOLVER_CACHE_DIR=DIR
               VLLM_PLUGINS=lora_filesystem_resolver,para   (vLLM's filesystem LoRA resolver)

Traffic: every request names adapter `tenant-<k>` drawn from a Zipf distribution
(s = 1.1 unless --zipf-exponent) over the N names: mixed tenants in every batch, a few
hot adapters, a long tail of cold ones. Request i of a phase is the same (adapter,
prompt) pair on both systems. Concurrency 4 then 16 on every server.

Protocol (bench/protocol.py): one server at a time, ABBA order, a fresh server for
every slot (so every slot starts with no adapter loaded), each server warmed up with the
base model and a `warmup` adapter that the measured traffic never names (compiles the
code paths, loads no tenant).

A request is *cold* when it is the first request for its adapter in that server, or was
sent before that first request's first token arrived (it waited on the same load);
every other request is *warm* (a warm request may still find its adapter evicted from
the host cache and reloaded: both systems then reload from disk). Cold and warm TTFT
percentiles pool the requests of every measured round.

Memory: PARA's from the server's /metrics (`vllm_para:adapter_host_bytes`,
`vllm_para:adapters_in_host_memory`, `vllm_para:adapter_slot_bytes`); LoRA's computed:
host = adapters in vLLM's CPU LoRA cache (min(distinct adapters used, --max-cpu-loras))
x trainable parameters x dtype bytes; device = --max-loras slots of
`adapters.lora_slot_bytes` (vLLM sizes every slot at --max-lora-rank on every linear
layer, embedding and logits; both checked against a real engine's tensors). "Adapters in
2 GiB" = floor(2 GiB / bytes per adapter).

Output in `bench/results/<run-id>/`: summary.csv (system x concurrency), memory.csv
(system), rounds.csv (every load phase), servers.csv, report.md, fleet.png. Server logs
and Locust files stay in the work directory (a temporary folder unless --work-dir).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from . import adapters as ad
from . import prometheus as PM
from . import protocol as P
from .fleet_plan import WARMUP_ADAPTER, FleetPlan, FleetSystem, setup_fleet_system
from .fleet_report import _meta, write_fleet
from .life import PhaseHooks, Server, log, ms, run_life
from .locust_runner import LoadSpec
from .protocol import percentile
from .systems import BASE_NAME, engine_flags


class ColdTracker:
    """Cold/warm requests over one server's life (phases fed in the order they ran)."""

    def __init__(self) -> None:
        self.ready: dict[str, float] = {}  # adapter -> when its first request got its first token (or ended)

    def split(self, records: list[dict]) -> tuple[list[dict], list[dict]]:
        cold, warm = [], []
        for r in sorted(records, key=lambda r: r["start"]):
            model = r["model"]
            if model not in self.ready:
                self.ready[model] = r["start"] + r["ttft"] if r.get("ttft") is not None else r["end"]
                cold.append(r)
            elif r["start"] < self.ready[model]:
                cold.append(r)
            else:
                warm.append(r)
        return cold, warm

    @property
    def distinct(self) -> int:
        return len(self.ready)


def _ttfts_ms(records: list[dict]) -> list[float]:
    return [r["ttft"] * 1000 for r in records if r.get("error") is None and r.get("ttft") is not None]


def memory_of(fs: FleetSystem, plan: FleetPlan, metrics: dict[str, float], distinct: int) -> dict:
    """Adapter memory of one server at the end of a phase (per worker)."""
    if fs.name == "para":
        in_host = int(metrics.get("vllm_para:adapters_in_host_memory", 0))
        host = metrics.get("vllm_para:adapter_host_bytes")
        device = metrics.get("vllm_para:adapter_slot_bytes")
        misses = metrics.get('vllm_para:adapter_cache_total{result="miss"}')
        loads = metrics.get("vllm_para:adapter_cold_load_seconds_count")
        load_s = metrics.get("vllm_para:adapter_cold_load_seconds_sum")
        return {"adapters_in_host_memory": in_host, "adapter_host_bytes": host, "adapter_device_bytes": device,
                "host_bytes_per_adapter": host / in_host if host and in_host else None,
                "device_bytes_per_slot": device / plan.device_slots if device else None,
                "cache_misses": misses, "mean_load_s": load_s / loads if loads else None,
                "memory_source": "/metrics"}
    in_host = min(distinct + 1, plan.host_cache)  # + the warm-up adapter
    return {"adapters_in_host_memory": in_host, "adapter_host_bytes": in_host * fs.host_bytes_per_adapter,
            "adapter_device_bytes": plan.device_slots * fs.device_bytes_per_slot,
            "host_bytes_per_adapter": fs.host_bytes_per_adapter, "device_bytes_per_slot": fs.device_bytes_per_slot,
            "cache_misses": None, "mean_load_s": None, "memory_source": "computed"}


class FleetHooks(PhaseHooks):
    """The fleet's additions to a server life: cold/warm TTFT per phase (pooled over the measured
    rounds into `cold_warm`) and the adapters' memory at the end of each phase."""

    def __init__(self, fs: FleetSystem, plan: FleetPlan, cold_warm: dict) -> None:
        self.fs, self.plan, self.cold_warm = fs, plan, cold_warm
        self.tracker = ColdTracker()

    def start(self, srv) -> None:
        self.tracker = ColdTracker()  # the warm-up named only the warm-up adapter

    def after(self, srv, slot: P.Slot, c: int, records: Path, metrics: dict) -> None:
        rows = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
        cold, warm = self.tracker.split(rows)
        cold_ms, warm_ms = _ttfts_ms(cold), _ttfts_ms(warm)
        metrics.update(cold_requests=len(cold), warm_requests=len(warm),
                       ttft_cold_p50=percentile(cold_ms, 50), ttft_cold_p99=percentile(cold_ms, 99),
                       ttft_warm_p50=percentile(warm_ms, 50), ttft_warm_p99=percentile(warm_ms, 99),
                       distinct_adapters=self.tracker.distinct,
                       **memory_of(self.fs, self.plan, PM.scrape_samples(srv.url), self.tracker.distinct))
        if not slot.warmup:
            pool = self.cold_warm.setdefault((self.fs.name, c), {"cold": [], "warm": []})
            pool["cold"] += cold_ms
            pool["warm"] += warm_ms

    def describe(self, metrics: dict) -> str:
        return (f"; {metrics['cold_requests']} cold, {metrics['distinct_adapters']} adapters so far, TTFT p50 cold "
                f"{ms(metrics['ttft_cold_p50'])} warm {ms(metrics['ttft_warm_p50'])}, "
                f"{metrics['adapters_in_host_memory']} adapters in host memory")


def run_fleet(args: argparse.Namespace) -> Path:
    plan = FleetPlan.from_args(args)
    run_dir = args.out_dir / (args.run_id or f"fleet-{plan.mode}-{plan.dtype}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    notes = args.notes.read_text() if args.notes else None
    slots = P.schedule(plan.systems, plan.rounds, args.warmup_rounds, reuse=False)
    log(f"fleet: {plan.adapters} adapters per system, Zipf s={plan.zipf_exponent}, concurrency "
         f"{','.join(map(str, plan.levels))}, {plan.requests} requests per level; ABBA schedule "
         f"({len(P.lives(slots))} server starts): {P.order_string(slots)}")
    meta = _meta(plan, slots, args.label)
    ms: list[P.Measurement] = []
    timeline: list[dict] = []
    cold_warm: dict[tuple[str, int], dict[str, list[float]]] = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vllm_para_fleet_") as tmp:
        work = args.work_dir or Path(tmp)
        log(f"building the base model in {work}")
        base = ad.build_base(plan.model, work / "base")
        systems = {}
        for system in plan.systems:  # every adapter is built before any server starts
            began = time.monotonic()
            systems[system] = setup_fleet_system(system, base, work, plan)
            meta["systems"][system] = {}
            log(f"[{system}] built {plan.adapters} + 1 adapters in {time.monotonic() - began:.0f}s")
        for i, life in enumerate(P.lives(slots)):
            fs = systems[life[0].system]
            server = Server(fs.name, engine_flags(plan.seed, plan.dtype, plan.enforce_eager) + fs.flags, fs.env,
                            warm_models=(BASE_NAME, WARMUP_ADAPTER))

            def load(c: int, round_: int, warmup: bool, requests: int | None) -> LoadSpec:
                return plan.load(c, round_, warmup=warmup, requests=requests)

            ms += run_life(i, life, server, base, plan, load, work / "raw", timeline, t0,
                           FleetHooks(fs, plan, cold_warm))
            write_fleet(ms, cold_warm, systems, plan, meta, run_dir, timeline, notes)  # partial results survive
        meta["total_minutes"] = f"{(time.monotonic() - t0) / 60:.1f}"
        write_fleet(ms, cold_warm, systems, plan, meta, run_dir, timeline, notes)
    log(f"done in {(time.monotonic() - t0) / 60:.1f} min: {run_dir / 'report.md'}")
    return run_dir


