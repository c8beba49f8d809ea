"""Metrics: SQuAD-style exact match / F1, accuracy, final-number accuracy, SQL execution accuracy."""

from __future__ import annotations

import re
import sqlite3
import string
from collections import Counter
from typing import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def first_line(text: str) -> str:
    """A generation up to its first newline (the task's answer line)."""
    return text.strip().split("\n", 1)[0].strip()


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(first_line(prediction)) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred = normalize_answer(first_line(prediction)).split()
    ref = normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def yes_no(prediction: str) -> str | None:
    words = normalize_answer(first_line(prediction)).split()
    return words[0] if words and words[0] in ("yes", "no") else None


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """The last number in a generation ("... The answer is 9." -> 9.0)."""
    found = _NUMBER.findall(text)
    return float(found[-1]) if found else None


def final_number_correct(prediction: str, gold: float) -> float:
    value = final_number(prediction)
    return float(value is not None and abs(value - gold) < 1e-6)


def extract_sql(text: str) -> str:
    """The predicted statement: the first line, up to and including the first ';'."""
    line = first_line(text)
    head, sep, _ = line.partition(";")
    return head.strip() + (";" if sep else "")


def execute(conn: sqlite3.Connection, sql: str) -> list[tuple] | None:
    """Rows of `sql` (sorted, so row order never matters), or None when it fails to run."""
    try:
        rows = conn.execute(sql).fetchall()
    except (sqlite3.Error, sqlite3.Warning, ValueError):
        return None
    return sorted((tuple(_round(v) for v in row) for row in rows), key=repr)


def _round(value):
    return round(value, 6) if isinstance(value, float) else value


def execution_match(conn: sqlite3.Connection, predicted_sql: str, gold_sql: str) -> float:
    """1.0 when the predicted statement runs (read-only) and returns the gold statement's rows."""
    gold = execute(conn, gold_sql)
    if gold is None:
        raise ValueError(f"gold SQL does not run: {gold_sql}")
    pred = execute(conn, predicted_sql)
    return float(pred is not None and pred == gold)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
