"""Yes/no questions over a passage (like BoolQ): accuracy."""

from __future__ import annotations

import random

from .base import Task, TaskExample, split3
from .metrics import mean, yes_no
from .passages import FACT_PHRASINGS, fact_value, make_people, render_passage
from .world import article, pools

QUESTIONS_ALL: dict[str, tuple[str, ...]] = {
    "town": ("Does {n} live in {v}?", "Is {v} the home town of {n}?", "Is {n} living in {v}?",
             "Would you find the home of {n} in {v}?"),
    "job": ("Is {n} {a} {v}?", "Does {n} work as {a} {v}?", "Is the job of {n} {v}?",
            "Does {n} earn a living as {a} {v}?"),
    "pet": ("Does {n} own {a} {v}?", "Is the pet of {n} {a} {v}?", "Does {n} keep {a} {v}?",
            "Is {a} {v} the pet of {n}?"),
    "color": ("Does {n} like the color {v}?", "Is {v} the favorite color of {n}?", "Does {n} love {v}?",
              "Is {v} the color {n} likes?"),
    "age": ("Is {n} {v} years old?", "Is the age of {n} {v}?", "Has {n} lived for {v} years?", "Is {n} aged {v}?"),
}
QUESTIONS = {kind: split3(q, 2, 1) for kind, q in QUESTIONS_ALL.items()}


def prompt(passage: str, question: str) -> str:
    return f"Passage: {passage}\nQuestion: {question}\nAnswer:"


def _generate(split: str, n: int, rng: random.Random) -> list[TaskExample]:
    phrasings = {k: v[split] for k, v in FACT_PHRASINGS.items()}
    ents = pools(split)
    out = []
    for i in range(n):
        people = make_people(split, rng, n_people=rng.randint(2, 3), n_facts=rng.randint(2, 3))
        passage = render_passage(people, phrasings, rng)
        person = rng.choice(people)
        kind = rng.choice(sorted(person["facts"]))
        truth = person["facts"][kind]
        answer = "yes" if i % 2 == 0 else "no"  # balanced
        value = truth
        if answer == "no":
            # half of the false values are another person's fact of the same kind (in the passage)
            others = [p["facts"][kind] for p in people if kind in p["facts"] and p["facts"][kind] != truth]
            while value == truth:
                value = rng.choice(others) if others and rng.random() < 0.5 else fact_value(kind, ents, rng)
        question = rng.choice(QUESTIONS[kind][split]).format(n=person["name"], v=value, a=article(value))
        out.append(TaskExample("boolq", prompt(passage, question), " " + answer, {"answer": answer, "kind": kind}))
    rng.shuffle(out)
    return out


def _score(preds, examples) -> dict[str, float]:
    return {"acc": mean([float(yes_no(p) == e.meta["answer"]) for p, e in zip(preds, examples)])}


def _templates(split: str) -> set[str]:
    return {q for v in QUESTIONS.values() for q in v[split]} | {p for v in FACT_PHRASINGS.values() for p in v[split]}


TASK = Task("boolq", "yes/no questions over a passage (BoolQ-like)", "acc", 3, _generate, _score, _templates)
