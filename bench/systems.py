"""What every served scenario shares: the systems, the modes (model shapes and defaults), the
engine flags every server gets, and the seed of each load phase.

Runs in: the benchmark driver (`python -m bench.compare`), never in a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import adapters as ad

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
