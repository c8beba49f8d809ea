"""Training data: read `{"prompt", "completion"}` JSONL files, and write a toy task.

`load_examples` validates every line and names the first bad one, so a typo in a
large file is found before any model is loaded.

`make_toy_dataset` writes a small, seeded, deterministic task ("color of cat?" ->
" blue") that the tiny test models can partly learn in a few dozen steps: the
completion is always one of a few colors, chosen by a fixed mapping of the word.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path


class TrainDataError(ValueError):
    """A training data file is missing, empty or malformed; the message says where."""


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str


def load_examples(path: str | Path) -> list[Example]:
    """Read a JSONL file of `{"prompt": str, "completion": str}` objects (one per line).

    Blank lines are skipped; extra keys are ignored. Raises `TrainDataError` with the
    file and line number of the first problem.
    """
    path = Path(path)
    if not path.exists():
        raise TrainDataError(f"{path}: data file not found (expected JSONL with 'prompt' and 'completion').")
    if not path.is_file():
        raise TrainDataError(f"{path}: not a file (expected JSONL with 'prompt' and 'completion').")
    examples: list[Example] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise TrainDataError(f"{path}: not UTF-8 text ({exc}).") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainDataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno}).") from exc
        if not isinstance(row, dict):
            raise TrainDataError(f"{where}: expected a JSON object with 'prompt' and 'completion', got {type(row).__name__}.")
        for key in ("prompt", "completion"):
            if key not in row:
                raise TrainDataError(f"{where}: missing key {key!r} (keys present: {sorted(row)}).")
            if not isinstance(row[key], str):
                raise TrainDataError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}.")
        if not row["prompt"]:
            raise TrainDataError(f"{where}: 'prompt' is empty (PARA conditions on the prompt).")
        if not row["completion"]:
            raise TrainDataError(f"{where}: 'completion' is empty (nothing to train on).")
        examples.append(Example(row["prompt"], row["completion"]))
    if not examples:
        raise TrainDataError(f"{path}: no examples (the file is empty).")
    return examples


# ------------------------------------------------------------------ toy task
TOY_WORDS: tuple[str, ...] = (
    "cat", "dog", "bird", "fish", "table", "user", "city", "item",
    "price", "date", "name", "query", "answer", "question", "value", "list",
)
TOY_COLORS: tuple[str, ...] = ("red", "green", "blue")


def toy_answer(word: str) -> str:
    """The fixed word -> color mapping of the toy task (no hashing: reproducible everywhere)."""
    return TOY_COLORS[TOY_WORDS.index(word) % len(TOY_COLORS)]


def toy_prompt(word: str) -> str:
    return f"color of {word}?"


def make_toy_dataset(path: str | Path, n: int = 200, seed: int = 0) -> Path:
    """Write `n` seeded examples `{"prompt": "color of <word>?", "completion": " <color>"}`."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            word = rng.choice(TOY_WORDS)
            f.write(json.dumps({"prompt": toy_prompt(word), "completion": " " + toy_answer(word)}) + "\n")
    return path
