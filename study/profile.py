"""Facts about one person as JSON of a fixed shape (the demo's structured-output task).

The passage mentions two or three people; the question names one. The answer is
`{"name": ..., "town": ..., "job": ..., "pet": ..., "age": ...}` in that key
order, `null` for a fact the passage does not state, one line. Scored by
parsing: `keys` (the headline: the share of the five fields right) and `exact`
(every field right).
"""

from __future__ import annotations

import json
import random

from .base import Task, TaskExample, split3
from .metrics import mean
from .passages import FACT_PHRASINGS, make_people, render_passage

KEYS: tuple[str, ...] = ("name", "town", "job", "pet", "age")
QUESTIONS = split3((
    "Give the profile of {n} as JSON.", "Return what the passage says about {n} as a JSON object.",
    "Describe {n} in JSON.", "Output the record of {n} as JSON.", "Write the facts about {n} as JSON.",
), 3, 1)


def prompt(passage: str, question: str) -> str:
    return f"Passage: {passage}\n{question}"


def record(person: dict) -> dict:
    facts = person["facts"]
    return {"name": person["name"], **{k: (int(facts[k]) if k == "age" and k in facts else facts.get(k))
                                       for k in KEYS[1:]}}


def _generate(split: str, n: int, rng: random.Random) -> list[TaskExample]:
    phrasings = {k: v[split] for k, v in FACT_PHRASINGS.items()}
    out = []
    for _ in range(n):
        people = make_people(split, rng, n_people=rng.randint(2, 3), n_facts=rng.randint(2, 4))
        person = rng.choice(people)
        gold = record(person)
        out.append(TaskExample("profile", prompt(render_passage(people, phrasings, rng),
                                                 rng.choice(QUESTIONS[split]).format(n=person["name"])),
                               " " + json.dumps(gold), {"record": gold}))
    return out


def parse(prediction: str) -> dict | None:
    """The first JSON object in `prediction` (code fences and prose around it allowed)."""
    start = prediction.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(prediction[start:])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _score(preds, examples) -> dict[str, float]:
    parsed = [parse(p) for p in preds]
    return {
        "exact": mean([float(p == e.meta["record"]) for p, e in zip(parsed, examples)]),
        "keys": mean([mean([float(p is not None and p.get(k, "?") == e.meta["record"][k]) for k in KEYS])
                      for p, e in zip(parsed, examples)]),
    }


def _templates(split: str) -> set[str]:
    return set(QUESTIONS[split]) | {p for v in FACT_PHRASINGS.values() for p in v[split]}


TASK = Task("profile", "a person's facts as JSON of a fixed shape", "keys", 48, _generate, _score, _templates)
