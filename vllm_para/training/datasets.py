"""Training data: read JSONL files of `{"prompt", "completion"}` or chat
`{"messages": [{"role", "content"}, ...]}` objects, and write toy tasks.

`load_examples` validates every line and names the first bad one, so a typo in a
large file is found before any model is loaded. How examples become tokens
(chat template, loss mask, pooling position) is `vllm_para.training.data`.

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


@dataclass(frozen=True)
class ChatExample:
    """A conversation; every assistant turn after the first message is a training target."""

    messages: tuple[dict[str, str], ...]


EXPECTED = "JSONL with 'prompt' and 'completion', or 'messages'"


def _chat_example(row: dict, where: str) -> ChatExample:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise TrainDataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects.")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TrainDataError(f"{where}: messages[{i}] must be an object with 'role' and 'content'.")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                got = type(m[key]).__name__ if key in m else "missing"
                raise TrainDataError(f"{where}: messages[{i}].{key} must be a string, got {got}.")
        if not m["role"]:
            raise TrainDataError(f"{where}: messages[{i}].role is empty.")
        clean.append({"role": m["role"], "content": m["content"]})
    if clean[0]["role"] == "assistant":
        raise TrainDataError(f"{where}: messages[0] is an assistant turn with no prompt before it "
                             "(PARA conditions on the prompt).")
    if not any(m["role"] == "assistant" for m in clean):
        raise TrainDataError(f"{where}: no 'assistant' message (nothing to train on).")
    return ChatExample(tuple(clean))


def load_examples(path: str | Path) -> list[Example | ChatExample]:
    """Read a JSONL file, one example per line: `{"prompt": str, "completion": str}`
    or `{"messages": [{"role": str, "content": str}, ...]}` (chat).

    Blank lines are skipped; extra keys are ignored. Raises `TrainDataError` with the
    file and line number of the first problem.
    """
    path = Path(path)
    if not path.exists():
        raise TrainDataError(f"{path}: data file not found (expected {EXPECTED}).")
    if not path.is_file():
        raise TrainDataError(f"{path}: not a file (expected {EXPECTED}).")
    examples: list[Example | ChatExample] = []
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
            raise TrainDataError(f"{where}: expected a JSON object with 'prompt' and 'completion' (or 'messages'), "
                                 f"got {type(row).__name__}.")
        if "messages" in row:
            examples.append(_chat_example(row, where))
            continue
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


def toy_chat(word: str, system: bool = False) -> dict:
    """One toy conversation: (optional system), user asks, assistant answers."""
    messages = [{"role": "system", "content": "answer with one color"}] if system else []
    messages += [{"role": "user", "content": toy_prompt(word)}, {"role": "assistant", "content": toy_answer(word)}]
    return {"messages": messages}


def _write_jsonl(path: str | Path, n: int, seed: int, record) -> Path:
    """Write `n` seeded JSON lines `record(rng)`."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps(record(rng)) + "\n")
    return path


def make_toy_chat_dataset(path: str | Path, n: int = 200, seed: int = 0) -> Path:
    """Write `n` seeded toy conversations (the toy task as chat; half with a system message)."""
    return _write_jsonl(path, n, seed, lambda rng: toy_chat(rng.choice(TOY_WORDS), system=rng.random() < 0.5))


def _toy_example(rng: random.Random) -> dict:
    word = rng.choice(TOY_WORDS)
    return {"prompt": toy_prompt(word), "completion": " " + toy_answer(word)}


def make_toy_dataset(path: str | Path, n: int = 200, seed: int = 0) -> Path:
    """Write `n` seeded examples `{"prompt": "color of <word>?", "completion": " <color>"}`."""
    return _write_jsonl(path, n, seed, _toy_example)
