"""Choosing the more plausible cause or effect of two (like COPA): accuracy.

The cause -> effect relations are world knowledge: the pretraining corpus tells
them as stories ("X, so Y." / "Y because X."), for every relation. The task's
splits use disjoint relations (and disjoint question wordings and people), so
a test item asks about a relation the adapter never saw in training: the
adapter has to teach the format, the base model brings the knowledge.
"""

from __future__ import annotations

import random

from .base import Task, TaskExample, split3
from .metrics import first_line, mean, normalize_answer
from .world import pools

# (cause, effect); {n} is a person. Partitioned into splits by RELATION_SPLITS.
RELATIONS: tuple[tuple[str, str], ...] = (
    ("{n} was hungry", "{n} ate some bread"),
    ("{n} was tired", "{n} went to bed early"),
    ("it rained on {n}", "{n} got wet"),
    ("{n} dropped the glass", "the glass broke"),
    ("{n} lost the keys", "{n} could not open the door"),
    ("{n} studied hard", "{n} passed the test"),
    ("{n} ran a long way", "{n} was out of breath"),
    ("{n} told a joke", "the friends laughed"),
    ("{n} was cold", "{n} put on a coat"),
    ("{n} was thirsty", "{n} drank some water"),
    ("the sun was hot", "{n} sat in the shade"),
    ("{n} missed the bus", "{n} was late for work"),
    ("{n} planted seeds", "flowers grew in the garden"),
    ("{n} cut a finger", "{n} put on a bandage"),
    ("{n} heard a loud noise", "{n} jumped in fear"),
    ("{n} won the race", "{n} got a medal"),
    ("the room was dark", "{n} turned on the lamp"),
    ("{n} ate too much cake", "{n} felt sick"),
    ("{n} forgot the umbrella", "the rain soaked the clothes of {n}"),
    ("{n} saved money", "{n} bought a new bike"),
    ("the milk was old", "the milk smelled bad"),
    ("{n} broke a leg", "{n} walked with a stick"),
    ("{n} got a gift", "{n} smiled with joy"),
    ("the wind blew hard", "the hat of {n} flew away"),
    ("{n} worked all night", "{n} yawned in the morning"),
    ("the road was icy", "the cart of {n} slid off the road"),
    ("{n} watered the plants", "the plants stayed green"),
    ("{n} shouted in the hall", "the baby woke up"),
    ("{n} lit a fire", "the hut became warm"),
    ("{n} left the door open", "the cat ran outside"),
    ("{n} practiced the song", "{n} sang it well"),
    ("the river flooded", "the fields were under water"),
    ("{n} stepped on a nail", "the foot of {n} hurt"),
    ("{n} washed the dishes", "the plates were clean"),
    ("the shop was closed", "{n} went home with no food"),
    ("{n} read a scary book", "{n} could not sleep"),
    ("{n} fixed the roof", "the rain stayed out of the house"),
    ("{n} was lonely", "{n} called an old friend"),
    ("the bell rang", "the children left the school"),
    ("{n} spilled the ink", "the page turned black"),
    ("{n} fed the goats", "the goats stopped crying"),
    ("{n} climbed the hill", "{n} saw the whole valley"),
    ("the bread burned", "the kitchen filled with smoke"),
    ("{n} sold the old cart", "{n} had coins to spend"),
    ("the well ran dry", "{n} walked far for water"),
    ("{n} sharpened the knife", "the knife cut well"),
    ("{n} wore new shoes", "{n} got blisters"),
    ("the storm broke the bridge", "{n} could not cross the river"),
)
_order = list(range(len(RELATIONS)))
random.Random(21).shuffle(_order)
RELATION_SPLITS: dict[str, tuple[int, ...]] = {
    "train": tuple(sorted(_order[:30])), "val": tuple(sorted(_order[30:39])), "test": tuple(sorted(_order[39:])),
}

ASK_CAUSE = split3(("What was the cause?", "Why did this happen?", "What caused this?", "What led to this?"), 2, 1)
ASK_EFFECT = split3(("What happened as a result?", "What was the effect?", "What happened next?",
                     "What followed from this?"), 2, 1)


def sentence(template: str, name: str) -> str:
    s = template.format(n=name)
    return s[0].upper() + s[1:] + "."


def prompt(premise: str, question: str, option1: str, option2: str) -> str:
    return f"Premise: {premise} {question}\nOption 1: {option1}\nOption 2: {option2}\nAnswer:"


def _generate(split: str, n: int, rng: random.Random) -> list[TaskExample]:
    rel_ids = RELATION_SPLITS[split]
    names = pools(split)["names"]
    out = []
    for i in range(n):
        rid = rng.choice(rel_ids)
        other = rng.choice([r for r in rel_ids if r != rid])
        name = rng.choice(names)
        cause, effect = RELATIONS[rid]
        ask_cause = rng.random() < 0.5
        if ask_cause:
            premise, right, wrong = effect, cause, RELATIONS[other][0]
            question = rng.choice(ASK_CAUSE[split])
        else:
            premise, right, wrong = cause, effect, RELATIONS[other][1]
            question = rng.choice(ASK_EFFECT[split])
        right_s, wrong_s = sentence(right, name), sentence(wrong, name)
        first_is_right = i % 2 == 0
        options = (right_s, wrong_s) if first_is_right else (wrong_s, right_s)
        out.append(TaskExample(
            "copa", prompt(sentence(premise, name), question, *options), " " + right_s,
            {"answer": right_s, "wrong": wrong_s, "label": 1 if first_is_right else 2,
             "asks": "cause" if ask_cause else "effect", "relation": rid},
        ))
    rng.shuffle(out)
    return out


def choice_correct(prediction: str, example: TaskExample) -> float:
    """The generation names the right alternative: its text (or "1"/"2", the option number)."""
    pred = normalize_answer(first_line(prediction))
    if pred == normalize_answer(example.meta["answer"]):
        return 1.0
    return float(pred in ("1", "2", "option 1", "option 2") and pred[-1] == str(example.meta["label"]))


def _score(preds, examples) -> dict[str, float]:
    return {"acc": mean([choice_correct(p, e) for p, e in zip(preds, examples)])}


def _templates(split: str) -> set[str]:
    return set(ASK_CAUSE[split]) | set(ASK_EFFECT[split]) | {"|".join(RELATIONS[i]) for i in RELATION_SPLITS[split]}


TASK = Task("copa", "the more plausible cause or effect of two (COPA-like)", "acc", 16, _generate, _score, _templates)
