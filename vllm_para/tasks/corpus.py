"""The pretraining corpus: seeded documents in the synthetic world's language.

Five kinds of documents, using every entity of every split and every phrasing
(what a pretrained LM knows), but never the tasks' prompt formats
("Passage: ... Question: ... Answer:", "Premise: ... Option 1: ...",
"Problem: ... Solution:", "Schema: ... SQL:"):

* biographies: facts about people, then questions answered in full sentences
  ("Where does Talo live? Talo lives in Vermi.", "Is Talo a baker? No, Talo is a cook.");
* stories of causes and effects ("Talo was hungry, so Talo ate some bread.");
* counting stories and equation worksheets ("Talo has 7 pens. Talo finds 5 pens. Now Talo has 12 pens.", "7 + 5 = 12.");
* SQL over the people table with terse comments ("-- names with town Vermi");
so an adapter only has to teach each task's format and mapping.
"""

from __future__ import annotations

import random
from typing import Iterator

from . import arith, boolq, copa, qa, sql
from .passages import FACT_KINDS, FACT_PHRASINGS_ALL, fact_value, render_fact
from .world import COLORS, ITEMS, JOBS, PETS, all_names, all_towns, article

CORPUS_VERSION = 2


def _entities() -> dict[str, tuple[str, ...]]:
    return {"names": all_names(), "towns": all_towns(), "jobs": JOBS, "pets": PETS, "colors": COLORS, "items": ITEMS}


def _answer_sentence(kind: str, name: str, value: str, rng: random.Random) -> str:
    return render_fact(rng.choice(FACT_PHRASINGS_ALL[kind]), name, value)


def biography(rng: random.Random) -> str:
    ents = _entities()
    people = []
    for name in rng.sample(ents["names"], rng.randint(2, 3)):
        kinds = rng.sample(FACT_KINDS, rng.randint(2, 3))
        people.append((name, {k: fact_value(k, ents, rng) for k in kinds}))
    parts = [_answer_sentence(k, n, v, rng) for n, facts in people for k, v in facts.items()]
    for _ in range(rng.randint(3, 5)):  # questions answered from the facts above: copying
        name, facts = rng.choice(people)
        kind = rng.choice(sorted(facts))
        value = facts[kind]
        if rng.random() < 0.5:
            q = rng.choice(qa.QUESTIONS_ALL[kind]).format(n=name)
            parts.append(f"{q} {_answer_sentence(kind, name, value, rng)}")
        else:
            asked = value if rng.random() < 0.5 else fact_value(kind, ents, rng)
            q = rng.choice(boolq.QUESTIONS_ALL[kind]).format(n=name, v=asked, a=article(asked))
            word = "Yes" if asked == value else "No"
            parts.append(f"{q} {word}, {_lower_first(_answer_sentence(kind, name, value, rng))}")
    return " ".join(parts)


def _lower_first(s: str) -> str:
    return s if s.startswith(tuple(all_names())) else s[0].lower() + s[1:]


def causal_story(rng: random.Random) -> str:
    names = all_names()
    parts = []
    for _ in range(rng.randint(2, 4)):
        cause, effect = copa.RELATIONS[rng.randrange(len(copa.RELATIONS))]
        n = rng.choice(names)
        c, e = cause.format(n=n), effect.format(n=n)
        form = rng.randrange(5)
        if form == 0:
            s = f"{c}, so {e}."
        elif form == 1:
            s = f"{e} because {c}."
        elif form == 2:
            s = f"Because {c}, {e}."
        elif form == 3:
            s = f"{c}. As a result, {e}."
        else:
            s = f"Why did it happen that {e}? Because {c}."
        parts.append(s[0].upper() + s[1:])
    return " ".join(parts)


def counting_story(rng: random.Random) -> str:
    ents = _entities()
    name, other = rng.sample(ents["names"], 2)
    item = rng.choice(ents["items"])
    value = rng.randint(2, 14)
    starts = [t for v in arith.START.values() for t in v]
    adds = [t for v in arith.ADD.values() for t in v]
    subs = [t for v in arith.SUB.values() for t in v]
    parts = [rng.choice(starts).format(n=name, k=value, i=item)]
    for _ in range(rng.randint(1, 4)):
        if value < arith.MAX_VALUE - 1 and (value <= 1 or rng.random() < 0.5):
            k = rng.randint(1, min(arith.MAX_STEP, arith.MAX_VALUE - value))
            parts.append(rng.choice(adds).format(n=name, m=other, k=k, i=item))
            value += k
        else:
            k = rng.randint(1, min(arith.MAX_STEP, value - 1))
            parts.append(rng.choice(subs).format(n=name, m=other, k=k, i=item))
            value -= k
        parts.append(f"Now {name} has {value} {item}.")
    return " ".join(parts)


def worksheet(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(2, 5)):
        value = rng.randint(1, arith.MAX_VALUE)
        eqs = []
        for _ in range(rng.randint(1, 4)):
            if value < arith.MAX_VALUE - 1 and (value <= 1 or rng.random() < 0.5):
                k = rng.randint(1, min(arith.MAX_STEP, arith.MAX_VALUE - value))
                eqs.append(f"{value} + {k} = {value + k}.")
                value += k
            else:
                k = rng.randint(1, min(arith.MAX_STEP, value - 1))
                eqs.append(f"{value} - {k} = {value - k}.")
                value -= k
        lines.append(" ".join(eqs))
    return "\n".join(lines)


SQL_COMMENTS = {
    "town": "-- names with town {t}",
    "count_job": "-- count rows with job {j}",
    "attr": "-- column {c} for {n}",
    "older": "-- names with age above {k}",
    "town_pet": "-- names with town {t} and pet {p}",
    "avg_age": "-- mean age for job {j}",
}


def sql_snippet(rng: random.Random) -> str:
    rows = sql.rows()
    lines = [f"-- table {sql.SCHEMA}"]
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(sorted(sql.KINDS))
        name, town, job, age, pet = rng.choice(rows)
        fields = dict(t=town, j=job, n=name, c=rng.choice(sql.COLUMNS), k=rng.randint(25, 70), p=pet)
        lines.append(SQL_COMMENTS[kind].format(**fields))
        lines.append(sql.KINDS[kind][0].format(**fields))
    return "\n".join(lines)


DOC_KINDS = {"biography": (biography, 0.32), "causal": (causal_story, 0.2), "counting": (counting_story, 0.14),
             "worksheet": (worksheet, 0.18), "sql": (sql_snippet, 0.16)}


def documents(seed: int = 0) -> Iterator[str]:
    """An endless, seeded stream of documents."""
    rng = random.Random(f"corpus/{CORPUS_VERSION}/{seed}")
    fns = [fn for fn, _ in DOC_KINDS.values()]
    weights = [w for _, w in DOC_KINDS.values()]
    while True:
        yield rng.choices(fns, weights)[0](rng)


def sample_documents(n: int, seed: int = 0) -> list[str]:
    it = documents(seed)
    return [next(it) for _ in range(n)]
