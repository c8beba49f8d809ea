"""Fleet scenario: a thousand tenants' adapters loaded on first use, PARA vs vLLM multi-LoRA.

    python -m loadtests.compare --scenario fleet                          # 1,000 adapters each, full-mode model
    python -m loadtests.compare --scenario fleet --fleet-adapters 200     # a reduced fleet
    python -m loadtests.compare --scenario fleet --mode small --fleet-adapters 20 --requests 8   # smoke test

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

Protocol (loadtests/protocol.py): one server at a time, ABBA order, a fresh server for
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

Output in `loadtests/results/<run-id>/`: summary.csv (system x concurrency), memory.csv
(system), rounds.csv (every load phase), servers.csv, report.md, fleet.png. Server logs
and Locust files stay in the work directory (a temporary folder unless --work-dir).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from . import adapters as ad
from . import protocol as P
from .compare import BASE_NAME, FLEET_SYSTEMS, MODES, engine_flags, phase_seed
from .locust_runner import LoadSpec, percentile, run_locust, summarize
from testkit.serve_process import VLLMServer

TENANT = "tenant-{:04d}"
WARMUP_ADAPTER = "warmup"  # in both adapter directories; never named by the measured traffic
FLEET_LEVELS = (4, 16)
HOST_CACHE = 64  # --max-cpu-para-adapters / --max-cpu-loras
DEVICE_SLOTS = 8  # --max-para-adapters / --max-loras
BUDGET_BYTES = 2 * 1024**3
DEFAULT_ZIPF = 1.1
LORA_RESOLVER_PLUGIN = "lora_filesystem_resolver"


@dataclass(frozen=True)
class FleetDefaults:
    requests: int  # per concurrency level
    prompt_words: int
    max_tokens: int
    rounds: int


FLEET_DEFAULTS = {
    "small": FleetDefaults(requests=8, prompt_words=16, max_tokens=8, rounds=2),
    "full": FleetDefaults(requests=96, prompt_words=32, max_tokens=32, rounds=3),
}


@dataclass(frozen=True)
class FleetPlan:
    mode: str
    model: ad.ModelSpec
    systems: tuple[str, ...]
    adapters: int
    levels: tuple[int, ...]
    requests: int
    prompt_words: int
    max_tokens: int
    zipf_exponent: float
    seed: int
    dtype: str
    rounds: int
    warmup_requests: int | None
    run_time_s: int
    startup_timeout_s: int
    host_cache: int = HOST_CACHE
    device_slots: int = DEVICE_SLOTS
    enforce_eager: bool = False
    adapter_kind: str = "para"  # the "para" system's adapters: PARA, or PEFT (IA)^3 served by the plugin

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "FleetPlan":
        d = FLEET_DEFAULTS[args.mode]
        levels = tuple(int(c) for c in args.concurrency.split(",")) if args.concurrency else FLEET_LEVELS
        zipf = DEFAULT_ZIPF if args.zipf_exponent is None else args.zipf_exponent
        return cls(args.mode, MODES[args.mode].model, tuple(args.systems), args.fleet_adapters, levels,
                   args.requests or d.requests, args.prompt_words or d.prompt_words, args.max_tokens or d.max_tokens,
                   zipf, args.seed, args.dtype, args.rounds or d.rounds, args.warmup_requests, args.run_time,
                   args.startup_timeout, args.fleet_host_cache, args.fleet_device_slots,
                   getattr(args, "enforce_eager", False), getattr(args, "adapter_kind", "para"))

    @property
    def names(self) -> tuple[str, ...]:
        """Tenant k is the k-th most popular under the Zipf law."""
        return tuple(TENANT.format(k) for k in range(self.adapters))

    def load(self, concurrency: int, round_: int, warmup: bool = False, requests: int | None = None) -> LoadSpec:
        if warmup:  # the warm-up adapter only: no tenant is loaded before the measured phases
            return LoadSpec(concurrency, requests or self.requests, self.max_tokens, self.prompt_words,
                            (WARMUP_ADAPTER,), seed=phase_seed(self.seed, round_, self.levels.index(concurrency),
                                                               True), run_time_s=self.run_time_s)
        return LoadSpec(concurrency, requests or self.requests, self.max_tokens, self.prompt_words, self.names,
                        distribution="zipf", zipf_exponent=self.zipf_exponent,
                        seed=phase_seed(self.seed, round_, self.levels.index(concurrency)), run_time_s=self.run_time_s)


@dataclass
class FleetSystem:
    name: str
    flags: list[str]
    env: dict[str, str]
    params: int  # trainable parameters per adapter
    description: str
    host_bytes_per_adapter: int | None = None  # computed (LoRA); PARA's comes from /metrics
    device_bytes_per_slot: int | None = None


def dtype_bytes(dtype: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]


def setup_fleet_system(system: str, base: Path, work: Path, plan: FleetPlan) -> FleetSystem:
    """Build `system`'s adapter directory (the N tenants + the warm-up adapter) and its server settings."""
    names = [WARMUP_ADAPTER, *plan.names]
    directory = work / f"{system}-fleet"
    if system == "para" and plan.adapter_kind == "ia3":
        params = ad.build_ia3_fleet(base, directory, names, plan.seed)
        flags = ["--enable-para", "--para-adapter-dir", str(directory), "--max-cpu-para-adapters",
                 str(plan.host_cache), "--max-para-adapters", str(plan.device_slots)]
        return FleetSystem(system, flags, {}, params, "PEFT (IA)^3 on k, v, down (feed-forward), served as static "
                                                      "PARA vectors")
    if system == "para":
        ad.build_para_fleet(base, directory, names, plan.seed)
        # device slots sized for rank 12 (vLLM sizes LoRA slots at --max-lora-rank, the smallest allowed >= r)
        flags = ["--enable-para", "--para-adapter-dir", str(directory), "--max-cpu-para-adapters",
                 str(plan.host_cache), "--max-para-adapters", str(plan.device_slots),
                 "--max-para-rank", str(ad.PARA_R)]
        params = ad.para_param_count(base)
        return FleetSystem(system, flags, {}, params, f"PARA r={ad.PARA_R} on {','.join(ad.PARA_TARGETS)}")
    if system != "lora":
        raise ValueError(f"unknown fleet system {system!r}; expected some of {FLEET_SYSTEMS}")
    spec, vocab = _spec_and_vocab(base)
    r = ad.matched_lora_rank(spec, ad.para_param_count(base))
    ad.build_lora_adapters(base, directory, "tenant", len(names), r, ad.MATCHED_LORA_TARGETS, plan.seed, names=names)
    max_rank = ad.max_lora_rank_flag(r)
    flags = ["--enable-lora", "--max-loras", str(plan.device_slots), "--max-cpu-loras", str(plan.host_cache),
             "--max-lora-rank", str(max_rank)]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "VLLM_LORA_RESOLVER_CACHE_DIR": str(directory),
           "VLLM_PLUGINS": f"{LORA_RESOLVER_PLUGIN},para"}
    params = ad.lora_param_count(spec, r, ad.MATCHED_LORA_TARGETS)
    return FleetSystem(system, flags, env, params,
                       f"LoRA r={r} on {','.join(ad.MATCHED_LORA_TARGETS)} (--max-lora-rank {max_rank})",
                       host_bytes_per_adapter=params * dtype_bytes(plan.dtype),
                       device_bytes_per_slot=ad.lora_slot_bytes(spec, vocab, max_rank, dtype_bytes(plan.dtype)))


def _spec_and_vocab(base: Path) -> tuple[ad.ModelSpec, int]:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(str(base))
    return (ad.ModelSpec(c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
                         c.num_key_value_heads, c.head_dim), c.vocab_size)


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


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (samples only)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def scrape(url: str) -> dict[str, float]:
    try:
        return parse_metrics(requests.get(url + "/metrics", timeout=30).text)
    except requests.RequestException:
        return {}


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


def run_fleet(args: argparse.Namespace) -> Path:
    plan = FleetPlan.from_args(args)
    run_dir = args.out_dir / (args.run_id or f"fleet-{plan.mode}-{plan.dtype}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    notes = args.notes.read_text() if args.notes else None
    slots = P.schedule(plan.systems, plan.rounds, args.warmup_rounds, reuse=False)
    _log(f"fleet: {plan.adapters} adapters per system, Zipf s={plan.zipf_exponent}, concurrency "
         f"{','.join(map(str, plan.levels))}, {plan.requests} requests per level; ABBA schedule "
         f"({len(P.lives(slots))} server starts): {P.order_string(slots)}")
    meta = _meta(plan, slots, args.label)
    ms: list[P.Measurement] = []
    timeline: list[dict] = []
    cold_warm: dict[tuple[str, int], dict[str, list[float]]] = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vllm_para_fleet_") as tmp:
        work = args.work_dir or Path(tmp)
        _log(f"building the base model in {work}")
        base = ad.build_base(plan.model, work / "base")
        systems = {}
        for system in plan.systems:  # every adapter is built before any server starts
            began = time.monotonic()
            systems[system] = setup_fleet_system(system, base, work, plan)
            meta["systems"][system] = {}
            _log(f"[{system}] built {plan.adapters} + 1 adapters in {time.monotonic() - began:.0f}s")
        for i, life in enumerate(P.lives(slots)):
            ms += run_fleet_life(i, life, plan, base, systems[life[0].system], work / "raw", timeline, t0, cold_warm)
            write_fleet(ms, cold_warm, systems, plan, meta, run_dir, timeline, notes)  # partial results survive
        meta["total_minutes"] = f"{(time.monotonic() - t0) / 60:.1f}"
        write_fleet(ms, cold_warm, systems, plan, meta, run_dir, timeline, notes)
    _log(f"done in {(time.monotonic() - t0) / 60:.1f} min: {run_dir / 'report.md'}")
    return run_dir


def run_fleet_life(index: int, life: list[P.Slot], plan: FleetPlan, base: Path, fs: FleetSystem, raw: Path,
                   timeline: list[dict], t0: float, cold_warm: dict) -> list[P.Measurement]:
    system = fs.name
    out: list[P.Measurement] = []
    entry = {"life": index, "system": system, "slots": " ".join(str(s.index) for s in life),
             "rounds": " ".join(str(s.round) for s in life), "start_s": round(time.monotonic() - t0, 3)}
    _log(f"[{system}] server {index}: starting vllm serve for round(s) {entry['rounds']}")
    srv = VLLMServer(base, engine_flags(plan.seed, plan.dtype, plan.enforce_eager) + fs.flags,
                     raw / "logs" / f"{system}_server{index}.log",
                     env=fs.env, startup_timeout=plan.startup_timeout_s)
    try:
        srv.start()
        entry["healthy_s"], entry["startup_s"] = round(time.monotonic() - t0, 3), round(srv.startup_s, 1)
        _log(f"[{system}] healthy after {srv.startup_s:.0f}s; warming up (base model and the warm-up adapter only)")
        srv.warm_up([BASE_NAME, WARMUP_ADAPTER])
        first = life[0]
        for c in plan.levels:
            n = plan.warmup_requests if plan.warmup_requests is not None else max(2, c)
            if n:
                rec = run_locust(srv.url, plan.load(c, first.round, warmup=True, requests=n),
                                 raw / "locust" / f"{system}_s{first.index}_warmup_c{c}")
                out.append(P.Measurement(first.round, system, c, summarize(rec, plan.max_tokens), warmup=True,
                                         slot=first.index, fresh=True))
        tracker = ColdTracker()
        for slot in life:
            for c in plan.levels:
                tag = f"{system}_r{slot.round}_c{c}" if not slot.warmup else f"{system}_w{-slot.round}_c{c}"
                rec = run_locust(srv.url, plan.load(c, slot.round), raw / "locust" / tag)
                metrics = summarize(rec, plan.max_tokens)
                records = [json.loads(line) for line in rec.read_text().splitlines() if line.strip()]
                cold, warm = tracker.split(records)
                cold_ms, warm_ms = _ttfts_ms(cold), _ttfts_ms(warm)
                metrics.update(cold_requests=len(cold), warm_requests=len(warm),
                               ttft_cold_p50=percentile(cold_ms, 50), ttft_cold_p99=percentile(cold_ms, 99),
                               ttft_warm_p50=percentile(warm_ms, 50), ttft_warm_p99=percentile(warm_ms, 99),
                               distinct_adapters=tracker.distinct,
                               **memory_of(fs, plan, scrape(srv.url), tracker.distinct))
                if not slot.warmup:
                    pool = cold_warm.setdefault((system, c), {"cold": [], "warm": []})
                    pool["cold"] += cold_ms
                    pool["warm"] += warm_ms
                out.append(P.Measurement(slot.round, system, c, metrics, warmup=slot.warmup, slot=slot.index,
                                         fresh=slot.fresh))
                _log(f"[{system}] round {slot.round} c={c}: {metrics['requests']} requests "
                     f"({len(cold)} cold, {tracker.distinct} adapters so far), {metrics['failures']} failed, "
                     f"{metrics['output_tokens_per_s']:.1f} tok/s, TTFT p50 cold {_ms(metrics['ttft_cold_p50'])} "
                     f"warm {_ms(metrics['ttft_warm_p50'])}, {metrics['adapters_in_host_memory']} adapters in host "
                     f"memory")
    finally:
        srv.stop()
        entry["stop_s"] = round(time.monotonic() - t0, 3)
        timeline.append(entry)
    return out


# ------------------------------------------------------------------------------------------ output
ROUND_FIELDS = ["slot", "round", "warmup", "system", "concurrency", "requests", "failures", "output_tokens_per_s",
                "ttft_p50", "ttft_p99", "cold_requests", "ttft_cold_p50", "ttft_cold_p99", "warm_requests",
                "ttft_warm_p50", "ttft_warm_p99", "tpot_p50", "distinct_adapters", "adapters_in_host_memory",
                "adapter_host_bytes", "adapter_device_bytes", "cache_misses", "mean_load_s", "wall_s"]
SUMMARY_FIELDS = ["system", "concurrency", "rounds", "requests", "failures", "output_tokens_per_s_median",
                  "output_tokens_per_s_min", "output_tokens_per_s_max", "ttft_p50_median", "ttft_p99_median",
                  "cold_requests", "ttft_cold_p50", "ttft_cold_p99", "warm_requests", "ttft_warm_p50",
                  "ttft_warm_p99", "tpot_p50_median", "distinct_adapters_median", "adapters_in_host_memory_max",
                  "para_over_lora_tok_s_median", "para_over_lora_tok_s_min", "para_over_lora_tok_s_max"]
MEMORY_FIELDS = ["system", "adapter", "trainable_params", "host_bytes_per_adapter", "adapters_in_host_memory_max",
                 "adapter_host_bytes_max", "device_slots", "device_bytes_per_slot", "adapter_device_bytes",
                 "adapters_in_2gib_host", "adapter_slots_in_2gib_device", "source"]


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def summary_rows(ms: list[P.Measurement], cold_warm: dict) -> list[dict]:
    tput = P.per_system(ms, "output_tokens_per_s")
    ratio = P.ratio_spreads(ms, "para", "lora", "output_tokens_per_s")
    rows = []
    for system in P.systems_of(ms):
        for level in P.levels(ms):
            mine = [m for m in P.measured(ms) if m.system == system and m.level == level]
            if not mine:
                continue
            # `mine` bound now (the lambda is only called within this iteration)
            med = lambda k, mine=mine: (  # noqa: E731
                s.median if (s := P.spread(m.metrics.get(k) for m in mine)) else None)
            pool = cold_warm.get((system, level), {"cold": [], "warm": []})
            t, r = tput.get((system, level)), ratio.get(level) if system == "para" else None
            rows.append({
                "system": system, "concurrency": level, "rounds": len(mine),
                "requests": sum(int(m.metrics["requests"]) for m in mine),
                "failures": sum(int(m.metrics["failures"]) for m in mine),
                "output_tokens_per_s_median": t and t.median, "output_tokens_per_s_min": t and t.lo,
                "output_tokens_per_s_max": t and t.hi, "ttft_p50_median": med("ttft_p50"),
                "ttft_p99_median": med("ttft_p99"), "cold_requests": len(pool["cold"]),
                "ttft_cold_p50": percentile(pool["cold"], 50), "ttft_cold_p99": percentile(pool["cold"], 99),
                "warm_requests": len(pool["warm"]), "ttft_warm_p50": percentile(pool["warm"], 50),
                "ttft_warm_p99": percentile(pool["warm"], 99), "tpot_p50_median": med("tpot_p50"),
                "distinct_adapters_median": med("distinct_adapters"),
                "adapters_in_host_memory_max": max((m.metrics.get("adapters_in_host_memory") or 0) for m in mine),
                "para_over_lora_tok_s_median": r and r.median, "para_over_lora_tok_s_min": r and r.lo,
                "para_over_lora_tok_s_max": r and r.hi,
            })
    return rows


def memory_rows(ms: list[P.Measurement], systems: dict[str, FleetSystem], plan: FleetPlan) -> list[dict]:
    rows = []
    for name, fs in systems.items():
        mine = [m for m in ms if m.system == name and "adapter_host_bytes" in m.metrics]
        if not mine:
            continue
        per_adapter = [m.metrics["host_bytes_per_adapter"] for m in mine if m.metrics.get("host_bytes_per_adapter")]
        per_slot = [m.metrics["device_bytes_per_slot"] for m in mine if m.metrics.get("device_bytes_per_slot")]
        host = max(per_adapter) if per_adapter else None
        slot = max(per_slot) if per_slot else None
        device = max((m.metrics.get("adapter_device_bytes") or 0) for m in mine) or None
        rows.append({
            "system": name, "adapter": fs.description, "trainable_params": fs.params,
            "host_bytes_per_adapter": host,
            "adapters_in_host_memory_max": max(int(m.metrics.get("adapters_in_host_memory") or 0) for m in mine),
            "adapter_host_bytes_max": max((m.metrics.get("adapter_host_bytes") or 0) for m in mine),
            "device_slots": plan.device_slots, "device_bytes_per_slot": slot, "adapter_device_bytes": device,
            "adapters_in_2gib_host": BUDGET_BYTES // math.ceil(host) if host else None,
            "adapter_slots_in_2gib_device": BUDGET_BYTES // math.ceil(slot) if slot else None,
            "source": mine[-1].metrics.get("memory_source"),
        })
    return rows


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: _fmt(row.get(k)) for k in fields})


def write_fleet(ms, cold_warm, systems, plan, meta, run_dir: Path, timeline, notes=None) -> None:
    write_csv(run_dir / "rounds.csv", ROUND_FIELDS,
              [{"slot": m.slot, "round": m.round, "warmup": m.warmup, "system": m.system, "concurrency": m.level,
                **m.metrics} for m in ms])
    summary = summary_rows(ms, cold_warm)
    memory = memory_rows(ms, systems, plan)
    write_csv(run_dir / "summary.csv", SUMMARY_FIELDS, summary)
    write_csv(run_dir / "memory.csv", MEMORY_FIELDS, memory)
    write_csv(run_dir / "servers.csv", ["life", "system", "slots", "rounds", "start_s", "healthy_s", "startup_s",
                                        "stop_s"], timeline)
    for name in systems:
        starts = [e["startup_s"] for e in timeline if e["system"] == name and "startup_s" in e]
        if starts:
            meta["systems"][name]["startup_s"] = f"{P.spread(starts).median:.0f}"
    write_plot(summary, memory, run_dir / "fleet.png")
    write_report(ms, summary, memory, systems, plan, meta, run_dir / "report.md", notes)


def _meta(plan: FleetPlan, slots: list[P.Slot], label: str | None) -> dict:
    m = plan.model
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "base model": f"{m.describe()} ({plan.mode} mode), dtype {plan.dtype}",
        "adapters per system": f"{plan.adapters} (`tenant-0000` ... ) + 1 warm-up adapter, in one directory, "
                               "none loaded at start-up",
        "traffic": f"Zipf s={plan.zipf_exponent} over the {plan.adapters} adapters (tenant k has weight "
                   f"1/(k+1)^s), {plan.prompt_words}-word prompts, {plan.max_tokens} output tokens (ignore_eos), "
                   "streamed, greedy; request i of a phase is the same on both systems",
        "requests per concurrency level": plan.requests, "concurrency levels": list(plan.levels),
        "host cache / device slots": f"{plan.host_cache} / {plan.device_slots} (both systems)",
        "engine flags (both systems)":
            f"`{' '.join(engine_flags(plan.seed, plan.dtype, plan.enforce_eager))}`, VLLM_CPU_KVCACHE_SPACE=1",
        "protocol": f"ABBA, {plan.rounds} measured round(s), one server at a time, a fresh server for every slot "
                    "(each starts with no tenant loaded); warm-up: base model + warm-up adapter only",
        "order": f"`{P.order_string(slots)}` ({len(P.lives(slots))} server starts)",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "systems": {},
    }
    if label:
        meta["banner"] = label
    return meta


def _n(v, digits: int = 1) -> str:
    return "-" if v is None or v == "" else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _mib(v) -> str:
    return "-" if not v else f"{v / 2**20:.2f} MiB"


def write_report(ms, summary, memory, systems, plan, meta, path: Path, notes: str | None = None) -> None:
    lines = ["# Fleet load test: adapters loaded on first use, PARA vs vLLM multi-LoRA", ""]
    if meta.get("banner"):
        lines += [f"> {meta['banner']}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k not in ("systems", "banner")]
    lines += ["", "## Systems", "", "| system | adapter (trainable params) | server flags | environment | "
              "start-up s (median) |", "|---|---|---|---|---|"]
    for name, fs in systems.items():
        flags = " ".join("DIR" if f.endswith(f"{name}-fleet") else f for f in fs.flags)
        env = " ".join(f"{k}={'DIR' if v.endswith(f'{name}-fleet') else v}" for k, v in fs.env.items()) or "-"
        lines.append(f"| {name} | {fs.description} ({fs.params}) | `{flags}` | `{env}` | "
                     f"{meta['systems'].get(name, {}).get('startup_s', '-')} |")

    lines += ["", "## Throughput and time to first token", "",
              "Output tok/s: median [min-max] over the measured rounds; PARA/LoRA: median [min-max] of the "
              "per-round ratios. TTFT in ms. *Cold*: the first request for its adapter in that server (plus "
              "requests for it sent before that one's first token); *warm*: the others (pooled over rounds). "
              "Each server runs concurrency 4 first, then 16, so most cold requests fall in the c=4 phase.", "",
              "| system | c | requests (failed) | output tok/s | PARA/LoRA tok/s | TTFT p50 / p99 (all) | cold n | "
              "cold TTFT p50 / p99 | warm n | warm TTFT p50 / p99 | adapters used per server |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        tput = f"{_n(r['output_tokens_per_s_median'])} [{_n(r['output_tokens_per_s_min'])}-" \
               f"{_n(r['output_tokens_per_s_max'])}]"
        ratio = "-" if r["para_over_lora_tok_s_median"] is None else \
            f"{r['para_over_lora_tok_s_median']:.2f}x [{r['para_over_lora_tok_s_min']:.2f}-" \
            f"{r['para_over_lora_tok_s_max']:.2f}]"
        lines.append(f"| {r['system']} | {r['concurrency']} | {r['requests']} ({r['failures']}) | {tput} | {ratio} | "
                     f"{_n(r['ttft_p50_median'])} / {_n(r['ttft_p99_median'])} | {r['cold_requests']} | "
                     f"{_n(r['ttft_cold_p50'])} / {_n(r['ttft_cold_p99'])} | {r['warm_requests']} | "
                     f"{_n(r['ttft_warm_p50'])} / {_n(r['ttft_warm_p99'])} | {_n(r['distinct_adapters_median'], 0)} |")

    lines += ["", "## Adapter memory and adapters per 2 GiB", "",
              "Per worker. Host: adapters held in host memory (PARA: its first-use cache, measured from "
              "/metrics; LoRA: vLLM's CPU LoRA cache, computed as adapters cached x parameters x dtype bytes). "
              "Device: the slots allocated at start-up (PARA: `vllm_para:adapter_slot_bytes`; LoRA: "
              "`--max-loras` slots at `--max-lora-rank` on every linear layer, embedding and logits). "
              "Adapters in 2 GiB = floor(2 GiB / bytes per adapter).", "",
              "| system | bytes / adapter (host) | max adapters in host memory | host bytes (max) | adapters in "
              "2 GiB of host | bytes / device slot | device bytes (slots) | device slots in 2 GiB | source |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in memory:
        lines.append(f"| {r['system']} | {_mib(r['host_bytes_per_adapter'])} | {r['adapters_in_host_memory_max']} | "
                     f"{_mib(r['adapter_host_bytes_max'])} | {_n(r['adapters_in_2gib_host'])} | "
                     f"{_mib(r['device_bytes_per_slot'])} | {_mib(r['adapter_device_bytes'])} "
                     f"({r['device_slots']}) | {_n(r['adapter_slots_in_2gib_device'])} | {r['source']} |")
    lines.append("")
    for r in memory:
        if r["host_bytes_per_adapter"]:
            raw = r["trainable_params"] * 4
            lines.append(f"- {r['system']}: {r['trainable_params']} trainable parameters = {_mib(raw)} in float32; "
                         f"held in host memory: {_mib(r['host_bytes_per_adapter'])} per adapter "
                         f"({r['host_bytes_per_adapter'] / raw:.2f}x)")
    para = next((m for m in reversed(ms) if m.system == "para" and m.metrics.get("cache_misses") is not None), None)
    if para is not None:
        lines += [f"- PARA first-use loads in the last server: {int(para.metrics['cache_misses'])} (cache misses, "
                      f"re-loads after eviction included) for {para.metrics['distinct_adapters']} distinct tenants "
                      f"+ the warm-up adapter; mean load {_n(para.metrics.get('mean_load_s'), 3)} s "
                      "(`vllm_para:adapter_cold_load_seconds`)."]

    checks = _checks(ms, plan)
    lines += ["", "## Checks", "", "| check | verdict | detail |", "|---|---|---|"]
    lines += [f"| {c} | **{v}** | {d} |" for c, v, d in checks]
    lines += ["", "## Per-round output tok/s", ""]
    rounds = P.rounds_of(ms)
    lines += ["| system | c | " + " | ".join(f"r{r}" for r in rounds) + " |", "|---|---|" + "---|" * len(rounds)]
    for system in P.systems_of(ms):
        for level in P.levels(ms):
            by = {m.round: m for m in P.measured(ms) if m.system == system and m.level == level}
            lines.append(f"| {system} | {level} | " + " | ".join(
                f"{by[r].metrics['output_tokens_per_s']:.1f}" if r in by else "-" for r in rounds) + " |")
    errors = [(m.system, m.round, m.level, e) for m in ms for e in m.metrics.get("errors", [])]
    if errors:
        lines += ["", "## Errors (first few)", ""] + [f"- {s} round {r} c={c}: `{e}`" for s, r, c, e in errors[:20]]
    if notes:
        lines += ["", notes.rstrip()]
    lines += ["", "## Plot", "", "![fleet](fleet.png)", ""]
    path.write_text("\n".join(lines))


def _checks(ms: list[P.Measurement], plan: FleetPlan) -> list[tuple[str, str, str]]:
    out = []
    failed = sum(int(m.metrics.get("failures", 0)) for m in ms)
    total = sum(int(m.metrics.get("requests", 0)) for m in ms)
    out.append(("zero failed requests (warm-up included)", "PASS" if failed == 0 else "FAIL",
                f"{failed} failed of {total}"))
    para = [m for m in P.measured(ms) if m.system == "para" and "adapters_in_host_memory" in m.metrics]
    if para:
        worst = max(int(m.metrics["adapters_in_host_memory"]) for m in para)
        out.append((f"PARA host cache bound: <= {plan.host_cache} adapters in host memory after every phase",
                    "PASS" if worst <= plan.host_cache else "FAIL", f"max {worst}"))
    n_rounds = len(P.rounds_of(ms))
    out.append(("ABBA: both systems in every measured round", "PASS" if all(
        {m.system for m in P.measured(ms) if m.round == r} == set(plan.systems) for r in P.rounds_of(ms))
        and n_rounds else "FAIL", f"{n_rounds} measured round(s)"))
    return out


def write_plot(summary: list[dict], memory: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    systems = list(dict.fromkeys(r["system"] for r in summary))
    levels = sorted({r["concurrency"] for r in summary})
    width = 0.8 / max(1, len(systems))
    ax = axes[0]
    for i, s in enumerate(systems):
        rows = {r["concurrency"]: r for r in summary if r["system"] == s}
        xs = [j + i * width for j, c in enumerate(levels) if c in rows]
        med = [rows[c]["output_tokens_per_s_median"] or 0 for c in levels if c in rows]
        lo = [m - (rows[c]["output_tokens_per_s_min"] or 0) for m, c in zip(med, [c for c in levels if c in rows])]
        hi = [(rows[c]["output_tokens_per_s_max"] or 0) - m for m, c in zip(med, [c for c in levels if c in rows])]
        ax.bar(xs, med, width, yerr=[lo, hi], capsize=3, label=s)
    ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(levels))], [f"c={c}" for c in levels])
    ax.set_ylabel("output tokens / s")
    ax.set_title("throughput (median, min-max)")
    ax.legend()
    ax = axes[1]  # cold vs warm TTFT p50 per level (bars), p99 as a marker
    labels, p50s, p99s, colors = [], [], [], []
    for c in levels:
        for s in systems:
            row = next((r for r in summary if r["system"] == s and r["concurrency"] == c), None)
            for kind in ("cold", "warm"):
                if row is None or row[f"ttft_{kind}_p50"] is None:
                    continue
                labels.append(f"{s} {kind} c={c} (n={row[f'{kind}_requests']})")
                p50s.append(row[f"ttft_{kind}_p50"])
                p99s.append(row[f"ttft_{kind}_p99"])
                colors.append(("tab:red" if kind == "cold" else "tab:green") if s == "para" else
                              ("lightcoral" if kind == "cold" else "lightgreen"))
    ax.bar(range(len(p50s)), p50s, color=colors, label="p50")
    ax.plot(range(len(p99s)), p99s, "k_", markersize=14, label="p99")
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=40, ha="right")
    ax.set_ylabel("TTFT (ms)")
    ax.set_title("time to first token: cold vs warm (bar p50, dash p99)")
    ax.legend()
    ax = axes[2]
    names = [r["system"] for r in memory]
    host = [r["adapters_in_2gib_host"] or 0 for r in memory]
    dev = [r["adapter_slots_in_2gib_device"] or 0 for r in memory]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], host, 0.4, label="host cache")
    ax.bar([x + 0.2 for x in xs], dev, 0.4, label="device slots")
    ax.set_xticks(list(xs), names)
    ax.set_yscale("log")
    ax.set_ylabel("adapters")
    ax.set_title("adapters held in 2 GiB")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _ms(v) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def _log(msg: str) -> None:
    print(f"[fleet {time.strftime('%H:%M:%S')}] {msg}", flush=True)
