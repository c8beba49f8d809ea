"""Extractive QA over a passage (like SQuAD): exact match and F1 of the answer span."""

from __future__ import annotations

import random

from .base import Task, TaskExample, split3
from .metrics import exact_match, f1, mean
from .passages import FACT_PHRASINGS, make_people, render_passage

QUESTIONS_ALL: dict[str, tuple[str, ...]] = {
    "town": ("Where does {n} live?", "In which town does {n} live?", "What town is the home of {n}?",
             "Which town does {n} call home?"),
    "job": ("What is the job of {n}?", "What does {n} do for work?", "What work does {n} do?",
            "What is the trade of {n}?"),
    "pet": ("What pet does {n} own?", "Which animal does {n} keep?", "What animal is the pet of {n}?",
            "Which pet belongs to {n}?"),
    "color": ("What color does {n} like?", "What is the favorite color of {n}?", "Which color does {n} love?",
              "Which color is liked by {n}?"),
    "age": ("How old is {n}?", "What is the age of {n}?", "How many years old is {n}?", "What age has {n} reached?"),
}
QUESTIONS = {kind: split3(q, 2, 1) for kind, q in QUESTIONS_ALL.items()}


def prompt(passage: str, question: str) -> str:
    return f"Passage: {passage}\nQuestion: {question}\nAnswer:"


def _generate(split: str, n: int, rng: random.Random) -> list[TaskExample]:
    phrasings = {k: v[split] for k, v in FACT_PHRASINGS.items()}
    out = []
    for _ in range(n):
        people = make_people(split, rng, n_people=rng.randint(2, 3), n_facts=rng.randint(2, 3))
        passage = render_passage(people, phrasings, rng)
        person = rng.choice(people)
        kind = rng.choice(sorted(person["facts"]))
        question = rng.choice(QUESTIONS[kind][split]).format(n=person["name"])
        answer = person["facts"][kind]
        out.append(TaskExample("qa", prompt(passage, question), " " + answer,
                               {"answer": answer, "kind": kind}))
    return out


def _score(preds, examples) -> dict[str, float]:
    return {
        "em": mean([exact_match(p, e.meta["answer"]) for p, e in zip(preds, examples)]),
        "f1": mean([f1(p, e.meta["answer"]) for p, e in zip(preds, examples)]),
    }


def _templates(split: str) -> set[str]:
    return {q for v in QUESTIONS.values() for q in v[split]} | {p for v in FACT_PHRASINGS.values() for p in v[split]}


TASK = Task("qa", "extractive QA over a passage (SQuAD-like)", "em", 8, _generate, _score, _templates)
