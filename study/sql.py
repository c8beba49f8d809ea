"""Questions to SQL over a small schema (like Q2SQL / WikiSQL): execution accuracy.

Gold and predicted statements run on a real sqlite3 database (`database()`,
in memory, read-only, with a step limit); a prediction counts when it runs and
returns the gold statement's rows (order ignored).
"""

from __future__ import annotations

import random
import sqlite3
from functools import lru_cache

from .base import Task, TaskExample, split3
from .metrics import execution_match, extract_sql, mean
from .world import SPLITS, all_names, pools

SCHEMA = "people(name, town, job, age, pet)"
COLUMNS = ("town", "job", "age", "pet")

# kind -> (SQL template, question templates split train/val/test)
KINDS: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "town": ("SELECT name FROM people WHERE town = '{t}';", split3((
        "Which people live in {t}?", "Give the names of the people in {t}.", "Who lives in {t}?",
        "Name everyone whose home is in {t}."), 2, 1)),
    "count_job": ("SELECT COUNT(*) FROM people WHERE job = '{j}';", split3((
        "How many {j}s are there?", "Count the people who work as {a} {j}.", "What is the number of {j}s?",
        "How many people have the job {j}?"), 2, 1)),
    "attr": ("SELECT {c} FROM people WHERE name = '{n}';", split3((
        "What is the {c} of {n}?", "Show the {c} of {n}.", "Give me the {c} of {n}.", "Find the {c} for {n}."), 2, 1)),
    "older": ("SELECT name FROM people WHERE age > {k};", split3((
        "Who is older than {k}?", "List the people older than {k}.", "Which people are above age {k}?",
        "Find everyone over {k} years old."), 2, 1)),
    "town_pet": ("SELECT name FROM people WHERE town = '{t}' AND pet = '{p}';", split3((
        "Which people in {t} own {a2} {p}?", "List the owners of {a2} {p} living in {t}.",
        "Who in {t} has {a2} {p}?", "Name the people from {t} who keep {a2} {p}."), 2, 1)),
    "avg_age": ("SELECT AVG(age) FROM people WHERE job = '{j}';", split3((
        "What is the average age of the {j}s?", "Give the mean age of people who work as {a} {j}.",
        "How old are the {j}s on average?", "Compute the average age among {j}s."), 2, 1)),
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@lru_cache(maxsize=None)
def rows() -> tuple[tuple[str, str, str, int, str], ...]:
    """The database's people: every name of every split, with attributes from its own split's pools."""
    out = []
    for split in SPLITS:
        ents = pools(split)
        rng = random.Random(f"sql-db/{split}")
        for name in ents["names"]:
            out.append((name, rng.choice(ents["towns"]), rng.choice(ents["jobs"]), rng.randint(18, 80),
                        rng.choice(ents["pets"])))
    assert len(out) == len(all_names())
    return tuple(out)


class _GuardedConnection(sqlite3.Connection):
    """A connection whose statements are aborted after `max_steps` x 1000 VM instructions."""

    max_steps = 2000

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = 0
        self.set_progress_handler(self._tick, 1000)

    def _tick(self) -> int:
        self.steps += 1
        return 1 if self.steps > self.max_steps else 0

    def execute(self, *args, **kwargs):  # type: ignore[override]
        self.steps = 0
        return super().execute(*args, **kwargs)


REGIONS = ("north", "south", "east", "west", "coast", "hills")


@lru_cache(maxsize=None)
def town_rows() -> tuple[tuple[str, str, int], ...]:
    """The `towns` table (used by `sql_hard`): every town of every split, a region and a founding year."""
    rng = random.Random("sql-db/towns")
    return tuple((town, rng.choice(REGIONS), rng.randint(1200, 1900))
                 for split in SPLITS for town in pools(split)["towns"])


def database() -> sqlite3.Connection:
    """A fresh in-memory database with the `people` and `towns` tables; read-only (PRAGMA query_only),
    runaway statements (e.g. huge cross joins) are aborted."""
    conn = sqlite3.connect(":memory:", factory=_GuardedConnection, check_same_thread=False)
    conn.execute("CREATE TABLE people (name TEXT, town TEXT, job TEXT, age INTEGER, pet TEXT)")
    conn.executemany("INSERT INTO people VALUES (?, ?, ?, ?, ?)", rows())
    conn.execute("CREATE TABLE towns (town TEXT, region TEXT, founded INTEGER)")
    conn.executemany("INSERT INTO towns VALUES (?, ?, ?)", town_rows())
    conn.commit()
    conn.execute("PRAGMA query_only = ON")
    return conn


def prompt(question: str) -> str:
    return f"Schema: {SCHEMA}\nQuestion: {question}\nSQL:"


def _generate(split: str, n: int, rng: random.Random) -> list[TaskExample]:
    people = [r for r in rows() if r[0] in set(pools(split)["names"])]
    kinds = sorted(KINDS)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        name, town, job, age, pet = rng.choice(people)
        col = rng.choice(COLUMNS)
        k = rng.randint(25, 70)
        fields = dict(t=town, j=job, n=name, c=col, k=k, p=pet, a=_article(job), a2=_article(pet))
        sql_t, questions = KINDS[kind]
        sql = sql_t.format(**fields)
        question = rng.choice(questions[split]).format(**fields)
        out.append(TaskExample("sql", prompt(question), " " + sql, {"sql": sql, "kind": kind}))
    rng.shuffle(out)
    return out


def execution_accuracy(preds, examples, conn: sqlite3.Connection | None = None) -> float:
    conn = conn or database()
    scores = []
    for p, e in zip(preds, examples):
        scores.append(execution_match(conn, extract_sql(p), e.meta["sql"]))
    return mean(scores)


def _score(preds, examples) -> dict[str, float]:
    return {"exec_acc": execution_accuracy(preds, examples)}


def _templates(split: str) -> set[str]:
    return {q for _, qs in KINDS.values() for q in qs[split]}


TASK = Task("sql", "questions to SQL over a small schema (Q2SQL-like)", "exec_acc", 32, _generate, _score, _templates)
