"""Seeded mixed-tenant traffic: which adapter each request names, and its prompt.

Pure Python (no locust import), so compare.py and the tests can use it too.
Request i is a function of (seed, i) alone: every system sees the same sequence
of (model, prompt) pairs whatever the concurrency or the user that sends it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from testkit.tiny_models import VOCAB_WORDS as WORDS  # the tokenizer's training words: ~1 token each

DISTRIBUTIONS = ("uniform", "zipf")


def model_weights(n: int, distribution: str = "uniform", zipf_exponent: float = 1.0) -> list[float]:
    """Probability of each of `n` models: equal, or Zipf (model k gets 1/(k+1)^s)."""
    if n < 1:
        raise ValueError("need at least one model")
    if distribution == "uniform":
        raw = [1.0] * n
    elif distribution == "zipf":
        raw = [1.0 / (k + 1) ** zipf_exponent for k in range(n)]
    else:
        raise ValueError(f"unknown distribution {distribution!r}; expected one of {DISTRIBUTIONS}")
    total = sum(raw)
    return [w / total for w in raw]


@dataclass(frozen=True)
class Traffic:
    models: tuple[str, ...]
    distribution: str = "uniform"
    zipf_exponent: float = 1.0
    prompt_words: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "_weights", model_weights(len(self.models), self.distribution, self.zipf_exponent))

    def request(self, index: int) -> tuple[str, str]:
        """(model name, prompt) of request number `index`."""
        rng = random.Random(self.seed * 1_000_003 + index)
        model = rng.choices(self.models, weights=self._weights)[0]
        prompt = " ".join(rng.choice(WORDS) for _ in range(self.prompt_words))
        return model, prompt
