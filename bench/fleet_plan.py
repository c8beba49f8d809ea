"""The fleet scenario's plan (defaults, command-line overrides) and its two systems' set-up.

Runs in: the benchmark driver (`python -m bench.compare --scenario fleet`); see bench/fleet.py.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from . import adapters as ad
from .locust_runner import LoadSpec
from .systems import FLEET_SYSTEMS, MODES, phase_seed, spec_of

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
    spec, vocab = spec_of(base)
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


