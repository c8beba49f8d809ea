"""Multi-step arithmetic word problems (like GSM8K/HSM10K): accuracy of the final number.

The gold solution writes one equation per step and ends with "The answer is N.",
so longer problems mean longer generations (the generation-length ablation
groups the test by `meta["steps"]`).
"""

from __future__ import annotations

import random

from .base import Task, TaskExample, split3
from .metrics import final_number_correct, mean
from .world import pools

MAX_VALUE = 20
MAX_STEP = 8

START = split3(("{n} has {k} {i}.", "At first {n} owns {k} {i}.", "{n} starts the day with {k} {i}.",
                "In the morning {n} holds {k} {i}."), 2, 1)
ADD = split3(("{n} buys {k} more {i}.", "{n} finds {k} {i}.", "{m} gives {n} {k} {i}.", "{n} picks up {k} more {i}.",
              "{n} gets {k} {i} as a gift."), 2, 1)
SUB = split3(("{n} gives {k} {i} to {m}.", "{n} loses {k} {i}.", "{n} sells {k} {i}.", "{n} drops {k} {i} on the way.",
              "{m} takes {k} {i} from {n}."), 2, 1)
ASK = split3(("How many {i} does {n} have now?", "How many {i} does {n} have at the end?",
              "How many {i} are left with {n}?", "What is the number of {i} that {n} holds in the end?"), 2, 1)


def prompt(problem: str) -> str:
    return f"Problem: {problem}\nSolution:"


def equations(start: int, ops: list[tuple[str, int]]) -> tuple[list[str], int]:
    """One equation per step ("7 + 5 = 12.") and the final number."""
    value, parts = start, []
    for op, k in ops:
        new = value + k if op == "+" else value - k
        parts.append(f"{value} {op} {k} = {new}.")
        value = new
    return parts, value


def solve(start: int, ops: list[tuple[str, int]]) -> tuple[str, int]:
    """The gold solution text (one equation per step) and the final number."""
    parts, value = equations(start, ops)
    return " ".join(parts) + f" The answer is {value}.", value


def _generate(split: str, n: int, rng: random.Random) -> list[TaskExample]:
    ents = pools(split)
    out = []
    for i in range(n):
        steps = 1 + i % 4  # 1..4 steps, balanced
        name, other = rng.sample(ents["names"], 2)
        item = rng.choice(ents["items"])
        value = start = rng.randint(2, 14)
        sentences = [rng.choice(START[split]).format(n=name, k=value, i=item)]
        ops = []
        for _ in range(steps):
            can_add, can_sub = value < MAX_VALUE - 1, value > 1
            op = "+" if (can_add and (not can_sub or rng.random() < 0.5)) else "-"
            k = (rng.randint(1, min(MAX_STEP, MAX_VALUE - value)) if op == "+"
                 else rng.randint(1, min(MAX_STEP, value - 1)))
            value = value + k if op == "+" else value - k
            ops.append((op, k))
            sentences.append(rng.choice((ADD if op == "+" else SUB)[split]).format(n=name, m=other, k=k, i=item))
        sentences.append(rng.choice(ASK[split]).format(n=name, i=item))
        solution, answer = solve(start, ops)
        out.append(TaskExample("arith", prompt(" ".join(sentences)), " " + solution,
                               {"answer": answer, "steps": steps}))
    rng.shuffle(out)
    return out


def _score(preds, examples) -> dict[str, float]:
    return {"acc": mean([final_number_correct(p, e.meta["answer"]) for p, e in zip(preds, examples)])}


def _templates(split: str) -> set[str]:
    return set(START[split]) | set(ADD[split]) | set(SUB[split]) | set(ASK[split])


TASK = Task("arith", "multi-step arithmetic word problems (GSM-like)", "acc", 48, _generate, _score, _templates)
