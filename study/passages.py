"""Passages about people (shared by the QA and yes/no tasks and the corpus).

Each fact kind has several surface phrasings; `FACT_PHRASINGS[kind]` is split
train / val / test (`base.split3`), so a test passage is worded with
phrasings its task's training split never used. The pretraining corpus uses
all of them.
"""

from __future__ import annotations

import random

from .base import split3
from .world import article, pools

FACT_KINDS: tuple[str, ...] = ("town", "job", "pet", "color", "age")

# kind -> phrasings (first 2 train, then 1 val, then the test ones)
FACT_PHRASINGS_ALL: dict[str, tuple[str, ...]] = {
    "town": ("{n} lives in {v}.", "{n} has a home in {v}.", "{n} resides in {v}.", "The home of {n} is in {v}."),
    "job": ("{n} works as {a} {v}.", "{n} is {a} {v}.", "{n} earns a living as {a} {v}.", "By trade, {n} is {a} {v}."),
    "pet": ("{n} owns {a} {v}.", "{n} keeps {a} {v} at home.", "{n} has {a} {v} as a pet.",
            "The pet of {n} is {a} {v}."),
    "color": ("{n} likes the color {v}.", "The favorite color of {n} is {v}.", "{n} loves the color {v}.",
              "{n} prefers {v} to any other color."),
    "age": ("{n} is {v} years old.", "{n} turned {v} this year.", "The age of {n} is {v}.",
            "{n} has lived for {v} years."),
}
FACT_PHRASINGS = {kind: split3(p, 2, 1) for kind, p in FACT_PHRASINGS_ALL.items()}

POOL_OF = {"town": "towns", "job": "jobs", "pet": "pets", "color": "colors"}


def fact_value(kind: str, entities: dict[str, tuple[str, ...]], rng: random.Random) -> str:
    if kind == "age":
        return str(rng.randint(18, 80))
    return rng.choice(entities[POOL_OF[kind]])


def render_fact(template: str, name: str, value: str) -> str:
    return template.format(n=name, v=value, a=article(value))


def make_people(split: str, rng: random.Random, n_people: int, n_facts: int) -> list[dict]:
    """`n_people` distinct people of `split`, each with `n_facts` random facts."""
    ents = pools(split)
    names = rng.sample(ents["names"], n_people)
    people = []
    for name in names:
        kinds = rng.sample(FACT_KINDS, n_facts)
        people.append({"name": name, "facts": {k: fact_value(k, ents, rng) for k in kinds}})
    return people


def render_passage(people: list[dict], phrasings: dict[str, tuple[str, ...]], rng: random.Random) -> str:
    sentences = []
    for person in people:
        for kind, value in person["facts"].items():
            sentences.append(render_fact(rng.choice(phrasings[kind]), person["name"], value))
    return " ".join(sentences)
