"""Harder extractive QA for a real base: longer passages with distractors, and two-hop questions.

A passage describes 4-5 people with 3 facts each, its sentences shuffled across
people, so every asked fact kind usually has distractors of the same kind in the
passage. Half the questions are two-hop: the person is named by another fact
("Where does the owner of the fox live?"), which is unique in the passage, so
the model must find that person first and then the asked fact. Scored like `qa`
(exact match and F1 of the span); `meta["hops"]` is 1 or 2.
"""

from __future__ import annotations

import random

from .base import Task, TaskExample, split3
from .metrics import exact_match, f1, mean
from .passages import FACT_PHRASINGS, make_people, render_fact
from .qa import QUESTIONS, prompt
from .world import article

# identifying fact kind -> descriptions of the person holding it (split train/val/test)
DESCRIPTIONS_ALL: dict[str, tuple[str, ...]] = {
    "town": ("the person who lives in {v}", "the resident of {v}", "the one whose home is in {v}",
             "the person living in {v}"),
    "job": ("the person who works as {a} {v}", "the {v}", "the one employed as {a} {v}",
            "the person whose job is {v}"),
    "pet": ("the owner of the {v}", "the person who keeps {a} {v}", "the one with {a} {v} as a pet",
            "the person whose pet is {a} {v}"),
    "color": ("the person who likes {v}", "the fan of the color {v}", "the one whose favorite color is {v}",
              "the person who loves {v}"),
    "age": ("the person who is {v} years old", "the one aged {v}", "the {v}-year-old",
            "the person whose age is {v}"),
}
DESCRIPTIONS = {kind: split3(d, 2, 1) for kind, d in DESCRIPTIONS_ALL.items()}


def _passage(people: list[dict], phrasings: dict[str, tuple[str, ...]], rng: random.Random) -> str:
    sentences = [render_fact(rng.choice(phrasings[k]), p["name"], v) for p in people for k, v in p["facts"].items()]
    rng.shuffle(sentences)
    return " ".join(sentences)


def _unique_kinds(person: dict, people: list[dict]) -> list[str]:
    """The fact kinds of `person` whose value no other person in the passage shares."""
    return sorted(k for k, v in person["facts"].items()
                  if all(p is person or p["facts"].get(k) != v for p in people))


def _generate(split: str, n: int, rng: random.Random) -> list[TaskExample]:
    phrasings = {k: v[split] for k, v in FACT_PHRASINGS.items()}
    out = []
    for i in range(n):
        hops = 1 + i % 2  # balanced
        while True:
            people = make_people(split, rng, n_people=rng.randint(4, 5), n_facts=3)
            person = rng.choice(people)
            kind = rng.choice(sorted(person["facts"]))
            ids = [k for k in _unique_kinds(person, people) if k != kind]
            if hops == 1 or ids:
                break
        if hops == 1:
            subject = person["name"]
        else:
            by = rng.choice(ids)
            value = person["facts"][by]
            subject = rng.choice(DESCRIPTIONS[by][split]).format(v=value, a=article(value))
        question = rng.choice(QUESTIONS[kind][split]).format(n=subject)
        question = question[0].upper() + question[1:]
        answer = person["facts"][kind]
        out.append(TaskExample("qa_hard", prompt(_passage(people, phrasings, rng), question), " " + answer,
                               {"answer": answer, "kind": kind, "hops": hops}))
    rng.shuffle(out)
    return out


def _score(preds, examples) -> dict[str, float]:
    out = {
        "em": mean([exact_match(p, e.meta["answer"]) for p, e in zip(preds, examples)]),
        "f1": mean([f1(p, e.meta["answer"]) for p, e in zip(preds, examples)]),
    }
    for hops in (1, 2):
        pairs = [(p, e) for p, e in zip(preds, examples) if e.meta["hops"] == hops]
        out[f"em_{hops}hop"] = mean([exact_match(p, e.meta["answer"]) for p, e in pairs])
    return out


def _templates(split: str) -> set[str]:
    return ({q for v in QUESTIONS.values() for q in v[split]} | {p for v in FACT_PHRASINGS.values() for p in v[split]}
            | {d for v in DESCRIPTIONS.values() for d in v[split]})


TASK = Task("qa_hard", "extractive QA with distractors and two-hop questions", "em", 8, _generate, _score,
            _templates)
