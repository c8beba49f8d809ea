"""Harder questions to SQL for a real base: two tables, joins, grouping and aggregates.

Schema `people(name, town, job, age, pet); towns(town, region, founded)` on the
same sqlite3 database as `sql` (`sql.database()`); scored by execution accuracy
(a prediction counts when it runs and returns the gold rows). Every question
names at least one entity of its split (a person, town, job or pet), so splits
stay disjoint in entities as well as wordings; `meta["kind"]` tells the query shape.
"""

from __future__ import annotations

import random

from .base import Task, TaskExample, split3
from .sql import REGIONS, execution_accuracy, rows, town_rows
from .world import article, pools

SCHEMA = "people(name, town, job, age, pet); towns(town, region, founded)"
JOIN = "FROM people JOIN towns ON people.town = towns.town"

# kind -> (SQL template, question templates split train/val/test)
KINDS: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "region_job": (f"SELECT people.name {JOIN} WHERE towns.region = '{{r}}' AND people.job = '{{j}}';", split3((
        "Which {j}s live in the {r} region?", "List the {j}s whose town is in the {r}.",
        "Who works as {a} {j} in a town of the {r} region?", "Name the {j}s living in the {r}."), 2, 1)),
    "region_of": ("SELECT towns.region " + JOIN + " WHERE people.name = '{n}';", split3((
        "In which region does {n} live?", "What region is the town of {n} in?",
        "Which region is home to {n}?", "Give the region where {n} lives."), 2, 1)),
    "founded_pet": (f"SELECT people.name {JOIN} WHERE people.pet = '{{p}}' AND towns.founded < {{y}};", split3((
        "Who owns {a2} {p} and lives in a town founded before {y}?",
        "List the {p} owners whose town was founded before {y}.",
        "Which people keep {a2} {p} in a town older than the year {y}?",
        "Name the owners of {a2} {p} living in towns founded before {y}."), 2, 1)),
    "count_town_older": ("SELECT COUNT(*) FROM people WHERE town = '{t}' AND age > {k};", split3((
        "How many people in {t} are older than {k}?", "Count the people of {t} above age {k}.",
        "What is the number of residents of {t} older than {k}?",
        "How many people living in {t} are over {k} years old?"), 2, 1)),
    "group_job": ("SELECT town, COUNT(*) FROM people WHERE job = '{j}' GROUP BY town;", split3((
        "How many {j}s live in each town?", "Count the {j}s per town.",
        "For every town, give the number of {j}s.", "Show each town with its count of {j}s."), 2, 1)),
    "max_age_town": ("SELECT MAX(age) FROM people WHERE town = '{t}';", split3((
        "What is the age of the oldest person in {t}?", "Give the highest age among the people of {t}.",
        "How old is the oldest resident of {t}?", "Find the maximum age in {t}."), 2, 1)),
    "avg_age_region": (f"SELECT AVG(people.age) {JOIN} WHERE towns.region = '{{r}}' AND people.pet = '{{p}}';",
                       split3((
        "What is the average age of {p} owners in the {r} region?",
        "Give the mean age of people with {a2} {p} living in the {r}.",
        "On average, how old are the owners of {a2} {p} in the {r} region?",
        "Compute the average age of {p} keepers whose town is in the {r}."), 2, 1)),
    "town_count_pet": ("SELECT town FROM people WHERE pet = '{p}' GROUP BY town HAVING COUNT(*) > 1;", split3((
        "Which towns have more than one {p} owner?", "List the towns where at least two people keep {a2} {p}.",
        "In which towns do several people own {a2} {p}?",
        "Name the towns with two or more owners of {a2} {p}."), 2, 1)),
}


def prompt(question: str) -> str:
    return f"Schema: {SCHEMA}\nQuestion: {question}\nSQL:"


def _generate(split: str, n: int, rng: random.Random) -> list[TaskExample]:
    names = set(pools(split)["names"])
    people = [r for r in rows() if r[0] in names]
    region_of = {town: region for town, region, _ in town_rows()}
    kinds = sorted(KINDS)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        name, town, job, age, pet = rng.choice(people)
        fields = dict(t=town, j=job, n=name, p=pet, r=region_of[town], k=rng.randint(25, 70),
                      y=rng.randint(1400, 1800), a=article(job), a2=article(pet))
        sql_t, questions = KINDS[kind]
        sql = sql_t.format(**fields)
        question = rng.choice(questions[split]).format(**fields)
        out.append(TaskExample("sql_hard", prompt(question), " " + sql, {"sql": sql, "kind": kind}))
    rng.shuffle(out)
    return out


def _score(preds, examples) -> dict[str, float]:
    return {"exec_acc": execution_accuracy(preds, examples)}


def _templates(split: str) -> set[str]:
    return {q for _, qs in KINDS.values() for q in qs[split]}


assert set(REGIONS)  # the regions are shared by every split, like the column names
TASK = Task("sql_hard", "questions to SQL with joins and aggregates over two tables", "exec_acc", 48, _generate,
            _score, _templates)
