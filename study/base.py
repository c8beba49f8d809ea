"""Task plumbing shared by the five generated tasks."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .world import SPLITS

MULTI = "multi"  # the scope of a multi-task adapter (all tasks mixed)


@dataclass(frozen=True)
class TaskExample:
    """One example: the prompt the model sees, the gold completion it is trained
    on (starting with a space), and what the metric needs (`meta`)."""

    task: str
    prompt: str
    completion: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "completion": self.completion, "task": self.task, "meta": self.meta}


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    metric: str  # headline metric name
    max_new_tokens: int
    # (split, n, rng) -> examples
    _generate: Callable[[str, int, random.Random], list[TaskExample]]
    # (predictions, examples) -> {metric: value in [0, 1]}
    _score: Callable[[Sequence[str], Sequence[TaskExample]], dict[str, float]]
    # split -> the surface templates that split uses (disjointness is tested)
    templates: Callable[[str], set[str]]

    def generate(self, split: str, n: int, seed: int = 0) -> list[TaskExample]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        # every (task, split, seed) has its own stream: splits never share a random draw
        rng = random.Random(f"{self.name}/{split}/{seed}")
        return self._generate(split, n, rng)

    def score(self, predictions: Sequence[str], examples: Sequence[TaskExample]) -> dict[str, float]:
        if len(predictions) != len(examples):
            raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
        if not examples:
            return {self.metric: float("nan")}
        return self._score(predictions, examples)


def write_jsonl(examples: Sequence[TaskExample], path: str | Path) -> Path:
    """`{"prompt", "completion"}` lines (what `vllm-para train --data` reads), plus task/meta."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_json()) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[TaskExample]:
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(TaskExample(row["task"], row["prompt"], row["completion"], row.get("meta", {})))
    return out


def pick_templates(templates: dict[str, tuple[str, ...]], split: str, rng: random.Random) -> str:
    return rng.choice(templates[split])


def split3(items: Sequence[str], train: int, val: int) -> dict[str, tuple[str, ...]]:
    """A fixed partition of a template list: the first `train` for train, the next `val` for val, the rest test."""
    items = tuple(items)
    return {"train": items[:train], "val": items[train:train + val], "test": items[train + val:]}
