"""What every served scenario shares: the systems and how each is set up, the modes (model shapes
and defaults), the engine flags every server gets, the seed of each load phase, and the mixed
scenario's `Plan` (the mode's defaults merged with the command line).

Runs in: the benchmark driver (`python -m bench.compare`), never in a server.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from . import adapters as ad
from . import protocol as P
from .locust_runner import LoadSpec

SYSTEMS = ("base", "para", "lora-matched", "lora16")
FLEET_SYSTEMS = ("para", "lora")  # --scenario fleet (bench/fleet.py)
SCENARIOS = ("mixed", "fleet")
DTYPES = ("float32", "bfloat16")
BASE_NAME = "base"  # --served-model-name of the base model on every server


@dataclass(frozen=True)
class Mode:
    model: ad.ModelSpec
    adapters: int
    concurrency: tuple[int, ...]
    requests: int
    prompt_words: int
    max_tokens: int
    rounds: int
    reuse: bool  # default of --reuse: adjacent (True) or never


MODES = {
    "small": Mode(ad.ModelSpec(128, 256, 2, 2, 1), adapters=4, concurrency=(1, 4), requests=8,
                  prompt_words=16, max_tokens=16, rounds=3, reuse=True),
    "full": Mode(ad.ModelSpec(1024, 2816, 4, 16, 4), adapters=8, concurrency=(1, 4, 16), requests=48,
                 prompt_words=64, max_tokens=64, rounds=4, reuse=False),
}


def engine_flags(seed: int, dtype: str = "float32", enforce_eager: bool = False) -> list[str]:
    """Engine settings shared by every system, so only the adapter method differs."""
    return ["--served-model-name", BASE_NAME, "--dtype", dtype, "--max-model-len", "512",
            "--max-num-seqs", "32", "--seed", str(seed)] + (["--enforce-eager"] if enforce_eager else [])


def phase_seed(seed: int, round_: int, level_index: int, warmup: bool = False) -> int:
    """Traffic seed of one load phase: a function of (seed, round, level), never of the system."""
    return seed * 1_000_000 + (round_ + 500) * 1000 + (500 if warmup else 0) + level_index


def spec_of(base: Path) -> tuple[ad.ModelSpec, int]:
    """The shape of the checkpoint at `base` (as the adapters' builders need it) and its vocabulary size."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(str(base))
    return (ad.ModelSpec(c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
                         c.num_key_value_heads, c.head_dim), c.vocab_size)


@dataclass
class SystemSetup:
    flags: list[str]
    models: tuple[str, ...]  # the `model` names requests spread over
    params: str  # trainable parameters per adapter, for the report


def setup_system(system: str, base: Path, work: Path, n: int, seed: int) -> SystemSetup:
    """Build the adapters `system` serves and the `vllm serve` flags that load them."""
    spec, _ = spec_of(base)
    para_params = ad.para_param_count(base)
    if system == "base":
        return SystemSetup([], (BASE_NAME,), "0")
    if system == "para":
        paths = ad.build_para_adapters(base, work / "para", n, seed)
        flags = ["--enable-para", "--para-modules", *_modules(paths), "--max-para-adapters", str(n)]
        return SystemSetup(flags, tuple(paths), f"{para_params} (r={ad.PARA_R}, targets {','.join(ad.PARA_TARGETS)})")
    if system == "lora-matched":
        r, targets = ad.matched_lora_rank(spec, para_params), ad.MATCHED_LORA_TARGETS
    elif system == "lora16":
        r, targets = 16, ad.ALL_LINEAR
    else:
        raise ValueError(f"unknown system {system!r}; expected some of {SYSTEMS}")
    paths = ad.build_lora_adapters(base, work / system, system, n, r, targets, seed)
    flags = ["--enable-lora", "--lora-modules", *_modules(paths), "--max-loras", str(n),
             "--max-lora-rank", str(ad.max_lora_rank_flag(r))]
    params = f"{ad.lora_param_count(spec, r, targets)} (r={r}, targets {','.join(targets)})"
    return SystemSetup(flags, tuple(paths), params)


def _modules(paths: dict[str, str]) -> list[str]:
    return [f"{name}={path}" for name, path in paths.items()]


@dataclass(frozen=True)
class Plan:
    """What one run does, after the mode's defaults and the command-line overrides are merged."""

    mode: str
    model: ad.ModelSpec
    systems: tuple[str, ...]
    levels: tuple[int, ...]
    requests: int
    adapters: int
    prompt_words: int
    max_tokens: int
    distribution: str
    zipf_exponent: float
    beam_search: bool
    seed: int
    run_time_s: int
    startup_timeout_s: int
    dtype: str = "float32"
    rounds: int = 3
    warmup_rounds: int = 0
    warmup_requests: int | None = None
    reuse: bool = True
    enforce_eager: bool = False
    requests_per_user: int | None = None
    server_env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Plan":
        m = MODES[args.mode]
        levels = tuple(int(c) for c in args.concurrency.split(",")) if args.concurrency else m.concurrency
        model = ad.real_spec(args.model) if getattr(args, "model", None) not in (None, "random") else m.model
        return cls(args.mode, model, tuple(args.systems), levels, args.requests or m.requests,
                   args.adapters or m.adapters, args.prompt_words or m.prompt_words, args.max_tokens or m.max_tokens,
                   args.distribution, 1.0 if args.zipf_exponent is None else args.zipf_exponent, args.beam_search,
                   args.seed, args.run_time,
                   args.startup_timeout, args.dtype, args.rounds or m.rounds, args.warmup_rounds,
                   args.warmup_requests, m.reuse if args.reuse is None else args.reuse == "adjacent",
                   getattr(args, "enforce_eager", False), getattr(args, "requests_per_user", None),
                   tuple(tuple(item.split("=", 1)) for item in getattr(args, "server_env", ())))

    def env_string(self) -> str:
        """Every server's environment beyond the inherited one, as the report states it."""
        return ", ".join(["VLLM_CPU_KVCACHE_SPACE=1", *(f"{k}={v}" for k, v in self.server_env)])

    def requests_at(self, concurrency: int) -> int:
        """Measured requests of one phase at `concurrency`."""
        return max(self.requests, (self.requests_per_user or 0) * concurrency)

    def load(self, concurrency: int, models: tuple[str, ...], round_: int, warmup: bool = False,
             requests: int | None = None) -> LoadSpec:
        """The phase (round, level) sends the same seeded requests on every system; different phases
        send different prompts, so no phase is served from another phase's prefix cache."""
        return LoadSpec(concurrency=concurrency, total_requests=requests or self.requests_at(concurrency),
                        max_tokens=self.max_tokens, prompt_words=self.prompt_words, models=models,
                        distribution=self.distribution, zipf_exponent=self.zipf_exponent,
                        seed=phase_seed(self.seed, round_, self.levels.index(concurrency), warmup),
                        beam_search=self.beam_search, run_time_s=self.run_time_s)

    def meta(self, slots: list[P.Slot]) -> dict:
        m = self.model
        traffic = self.distribution + (f" (s={self.zipf_exponent})" if self.distribution == "zipf" else "")
        traffic += f", {self.prompt_words}-word prompts, {self.max_tokens} output tokens (ignore_eos), "
        traffic += "beam search width 3 (not streamed)" if self.beam_search else "streamed, greedy"
        return {
            "mode": self.mode, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "base model": m.describe(),
            "adapters per system": self.adapters, "traffic": traffic,
            "requests per concurrency level": (", ".join(f"c={c}: {self.requests_at(c)}" for c in self.levels)
                                               if self.requests_per_user else self.requests),
            "concurrency levels": list(self.levels),
            "seed": self.seed,
            "engine flags (all systems)": f"`{' '.join(engine_flags(self.seed, self.dtype, self.enforce_eager))}`, "
                                          + self.env_string(),
            "protocol": f"ABBA, {self.rounds} measured round(s)"
                        + (f" after {self.warmup_rounds} warm-up round(s)" if self.warmup_rounds else "")
                        + ", one server at a time; every fresh server gets one request per model and "
                        + (f"{self.warmup_requests}" if self.warmup_requests is not None else "max(2, c)")
                        + " unmeasured requests at each level c before its first measured slot; "
                        + ("adjacent slots of one system share a server (`*`)" if self.reuse
                           else "a fresh server for every slot"),
            "order": f"`{P.order_string(slots)}` ({len(P.lives(slots))} server starts)",
            "machine": P.machine(),
            "systems": {},
        }
