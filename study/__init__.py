"""Five generated tasks mirroring the PARA paper's (SQuAD, BoolQ, COPA, HSM10K, Q2SQL), a
deterministic pretrained small base model for them, and the study that compares
adapters on them through vLLM.

    from study import get_task
    train = get_task("qa").generate("train", 800)
    scores = get_task("qa").score(predictions, test_examples)

Splits (train / val / test) share no entities (people, towns, jobs, pets,
colors, items; `world.pools`) and no templates (question wordings, passage
phrasings, COPA relations, word-problem sentences): the test measures
generalisation, not memorisation.
"""

from __future__ import annotations

from .base import Task, TaskExample, read_jsonl, write_jsonl
from .world import SPLITS

TASK_NAMES: tuple[str, ...] = ("qa", "boolq", "copa", "arith", "sql")
# harder variants for a real base (the study's default there): distractors and two hops; joins and aggregates
HARD_TASK_NAMES: tuple[str, ...] = ("qa_hard", "boolq", "copa", "arith", "sql_hard")


def get_task(name: str) -> Task:
    from . import arith, boolq, copa, profile, qa, qa_hard, sql, sql_hard

    tasks = {"qa": qa.TASK, "boolq": boolq.TASK, "copa": copa.TASK, "arith": arith.TASK, "sql": sql.TASK,
             "qa_hard": qa_hard.TASK, "sql_hard": sql_hard.TASK,
             "profile": profile.TASK}  # profile: the demo's JSON task, not one of the study's five
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(tasks)}")
    return tasks[name]


def all_tasks() -> list[Task]:
    return [get_task(n) for n in TASK_NAMES]


__all__ = ["HARD_TASK_NAMES", "SPLITS", "TASK_NAMES", "Task", "TaskExample", "all_tasks", "get_task", "read_jsonl",
           "write_jsonl"]
