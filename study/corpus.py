"""The pretraining corpus: seeded documents in the synthetic world's language.

Ten kinds of documents, using every entity of every split and every phrasing
(what a pretrained LM knows), but never the tasks' prompt formats
("Passage: ... Question: ... Answer:", "Premise: ... Option 1: ...",
"Problem: ... Solution:", "Schema: ... SQL:"):

* biographies: facts about people, then questions answered in full sentences
  ("Where does Talo live? Talo lives in Vermi.", "Is Talo a baker? No, Talo is a cook.");
* stories of causes and effects ("Talo was hungry, so Talo ate some bread.");
* counting stories and equation worksheets ("Talo has 7 pens. Talo finds 5 pens. Now Talo has 12 pens.", "7 + 5 = 12.");
* SQL over the people table with terse comments ("-- names with town Vermi");
* roll calls: a list said twice;
* quizzes in a plain "Q: ... / A: ..." layout: short answers copied from the facts
  above ("A: Vermi", "A: no"), the more plausible of two causes or effects, worked
  word problems ("... 7 + 5 = 12. So Talo has 12 pens."), questions answered in SQL;
so the base model knows the skills and a generic question/answer layout (as any
pretrained LM does), and an adapter has to teach each task's own format and mapping.
"""

from __future__ import annotations

import random
from typing import Iterator

from . import arith, boolq, copa, qa, sql
from .passages import FACT_KINDS, FACT_PHRASINGS_ALL, fact_value, render_fact
from .world import COLORS, ITEMS, JOBS, PETS, all_names, all_towns, article

CORPUS_VERSION = 4


def _every(templates: dict[str, tuple[str, ...]]) -> list[str]:
    """The templates of every split (split3's train/val/test dict), in order."""
    return [t for v in templates.values() for t in v]


def _people(rng: random.Random, ents: dict, with_phrasing: bool) -> list[tuple[str, dict]]:
    """2-3 people with 2-3 facts each: kind -> value (with_phrasing: (value, the phrasing to state it))."""
    people = []
    for name in rng.sample(ents["names"], rng.randint(2, 3)):
        kinds = rng.sample(FACT_KINDS, rng.randint(2, 3))
        people.append((name, {k: (fact_value(k, ents, rng), rng.choice(FACT_PHRASINGS_ALL[k])) if with_phrasing
                              else fact_value(k, ents, rng) for k in kinds}))
    return people


def _entities() -> dict[str, tuple[str, ...]]:
    return {"names": all_names(), "towns": all_towns(), "jobs": JOBS, "pets": PETS, "colors": COLORS, "items": ITEMS}


def _answer_sentence(kind: str, name: str, value: str, rng: random.Random) -> str:
    return render_fact(rng.choice(FACT_PHRASINGS_ALL[kind]), name, value)


def biography(rng: random.Random) -> str:
    """Facts about 2-3 people, then 3-5 questions answered with the sentence that stated the fact
    (so the answer is found by looking back: the copying the QA, yes/no and SQL tasks need)."""
    ents = _entities()
    people = _people(rng, ents, with_phrasing=True)
    parts = [render_fact(t, n, v) for n, facts in people for v, t in facts.values()]
    for _ in range(rng.randint(3, 5)):
        name, facts = rng.choice(people)
        kind = rng.choice(sorted(facts))
        value, phrasing = facts[kind]
        stated = render_fact(phrasing, name, value)
        if rng.random() < 0.5:
            q = rng.choice(qa.QUESTIONS_ALL[kind]).format(n=name)
            parts.append(f"{q} {stated}")
        else:
            asked = value if rng.random() < 0.5 else fact_value(kind, ents, rng)
            q = rng.choice(boolq.QUESTIONS_ALL[kind]).format(n=name, v=asked, a=article(asked))
            word = "Yes" if asked == value else "No"
            parts.append(f"{q} {word}, {_lower_first(stated)}")
    return " ".join(parts)


def roll_call(rng: random.Random) -> str:
    """A list said twice (the simplest look-back: what came after this word last time?)."""
    ents = _entities()
    kind, intro = rng.choice((("names", "The guests are"), ("towns", "The route goes through"),
                              ("items", "The shop sells"), ("jobs", "The fair has a")))
    xs = rng.sample(ents[kind], rng.randint(3, 6))
    listed = ", ".join(xs)
    return f"{intro} {listed}. Once more: {listed}."


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
    starts, adds, subs = _every(arith.START), _every(arith.ADD), _every(arith.SUB)
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


def fact_quiz(rng: random.Random) -> str:
    """Facts about 2-3 people, then short-answer and yes/no questions about them."""
    ents = _entities()
    people = _people(rng, ents, with_phrasing=False)
    facts = [(n, k, v) for n, fs in people for k, v in fs.items()]
    rng.shuffle(facts)
    lines = [" ".join(_answer_sentence(k, n, v, rng) for n, k, v in facts)]
    for _ in range(rng.randint(2, 4)):
        name, kind, value = rng.choice(facts)
        if rng.random() < 0.5:
            lines.append(f"Q: {rng.choice(qa.QUESTIONS_ALL[kind]).format(n=name)}\nA: {value}")
        else:
            asked = value if rng.random() < 0.5 else fact_value(kind, ents, rng)
            q = rng.choice(boolq.QUESTIONS_ALL[kind]).format(n=name, v=asked, a=article(asked))
            lines.append(f"Q: {q}\nA: {'yes' if asked == value else 'no'}")
    return "\n".join(lines)


def choice_quiz(rng: random.Random) -> str:
    """The more plausible cause or effect of two, answered with the right one."""
    names = all_names()
    lines = []
    for _ in range(rng.randint(1, 3)):
        rid, other = rng.sample(range(len(copa.RELATIONS)), 2)
        n = rng.choice(names)
        cause, effect = (t.format(n=n) for t in copa.RELATIONS[rid])
        if rng.random() < 0.5:
            premise, right, wrong = effect, cause, copa.RELATIONS[other][0].format(n=n)
            ask = rng.choice(_every(copa.ASK_CAUSE))
        else:
            premise, right, wrong = cause, effect, copa.RELATIONS[other][1].format(n=n)
            ask = rng.choice(_every(copa.ASK_EFFECT))
        a, b = (right, wrong) if rng.random() < 0.5 else (wrong, right)
        up = copa.sentence
        lines.append(f"Q: {up(premise, n)} {ask} {up(a, n)[:-1]}, or {_lower_first(up(b, n)[:-1])}?\nA: {up(right, n)}")
    return "\n".join(lines)


def worked_problem(rng: random.Random) -> str:
    """A word problem and its worked solution, one equation per step."""
    ents = _entities()
    name, other = rng.sample(ents["names"], 2)
    item = rng.choice(ents["items"])
    value = start = rng.randint(2, 14)
    sentences, ops = [rng.choice(_every(arith.START)).format(n=name, k=value, i=item)], []
    for _ in range(rng.randint(1, 4)):
        add = value < arith.MAX_VALUE - 1 and (value <= 1 or rng.random() < 0.5)
        k = (rng.randint(1, min(arith.MAX_STEP, arith.MAX_VALUE - value)) if add
             else rng.randint(1, min(arith.MAX_STEP, value - 1)))
        value = value + k if add else value - k
        ops.append(("+" if add else "-", k))
        sentences.append(rng.choice(_every(arith.ADD if add else arith.SUB)).format(n=name, m=other, k=k, i=item))
    sentences.append(rng.choice(_every(arith.ASK)).format(n=name, i=item))
    steps, _ = arith.equations(start, ops)  # not the task's "The answer is N." ending
    return f"Q: {' '.join(sentences)}\nA: {' '.join(steps)} So {name} has {value} {item}."


def sql_quiz(rng: random.Random) -> str:
    """Questions about the people table answered with a query."""
    rows = sql.rows()
    lines = []
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(sorted(sql.KINDS))
        name, town, job, age, pet = rng.choice(rows)
        fields = dict(t=town, j=job, n=name, c=rng.choice(sql.COLUMNS), k=rng.randint(25, 70), p=pet,
                      a=article(job), a2=article(pet))
        template, questions = sql.KINDS[kind]
        q = rng.choice(_every(questions)).format(**fields)
        lines.append(f"Q: {q}\nA: {template.format(**fields)}")
    return "\n".join(lines)


DOC_KINDS = {"biography": (biography, 0.22), "causal": (causal_story, 0.10), "counting": (counting_story, 0.06),
             "worksheet": (worksheet, 0.08), "sql": (sql_snippet, 0.06), "roll_call": (roll_call, 0.12),
             "fact_quiz": (fact_quiz, 0.16), "choice_quiz": (choice_quiz, 0.08), "worked": (worked_problem, 0.06),
             "sql_quiz": (sql_quiz, 0.06)}


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
