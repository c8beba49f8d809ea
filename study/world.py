"""The synthetic world every task and the pretraining corpus are drawn from.

Entities (people, towns, jobs, pets, foods, items) are generated
deterministically and partitioned into disjoint train / val / test pools, so a
task's test split never mentions an entity its training split mentions. The
pretraining corpus (`study.corpus`) uses all of them: the base model
knows every word, as a pretrained LM does; the adapter never sees test entities.
"""

from __future__ import annotations

import random
from functools import lru_cache

SPLITS: tuple[str, ...] = ("train", "val", "test")

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "st", "tr", "gl", "kr")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "l", "r", "s", "m", "k")


def _pseudo_words(n: int, seed: int, syllables: tuple[int, ...] = (2, 3), avoid: set[str] = frozenset()) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    seen = set(avoid)
    while len(out) < n:
        k = rng.choice(syllables)
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(k)) + rng.choice(_CODAS)
        if word in seen or len(word) > 9:
            continue
        seen.add(word)
        out.append(word)
    return out


JOBS = (
    "baker", "farmer", "teacher", "doctor", "painter", "sailor", "miner", "tailor", "singer", "driver",
    "builder", "writer", "hunter", "fisher", "weaver", "potter", "guard", "nurse", "cook", "judge",
    "clerk", "smith", "dancer", "pilot", "porter", "barber", "gardener", "trader", "carpenter", "shepherd",
)
PETS = (
    "cat", "dog", "bird", "fish", "horse", "goat", "rabbit", "mouse", "duck", "frog",
    "lizard", "pig", "sheep", "owl", "turtle", "snake", "hen", "fox",
)
COLORS = ("red", "green", "blue", "yellow", "black", "white", "brown", "orange", "purple", "gray", "pink", "gold")
ITEMS = (
    "apples", "pears", "coins", "books", "stones", "shells", "cards", "eggs", "nuts", "plums",
    "cups", "pens", "rings", "beads", "keys", "hats", "boxes", "candles", "ropes", "bells",
    "lemons", "plates", "buttons", "marbles",
)

# share of each pool per split (train, val, test)
_SHARES = (0.6, 0.2, 0.2)


def _partition(pool: list[str] | tuple[str, ...], seed: int) -> dict[str, tuple[str, ...]]:
    items = list(pool)
    random.Random(seed).shuffle(items)
    n = len(items)
    a = round(n * _SHARES[0])
    b = a + round(n * _SHARES[1])
    return {"train": tuple(items[:a]), "val": tuple(items[a:b]), "test": tuple(items[b:])}


@lru_cache(maxsize=None)
def all_names() -> tuple[str, ...]:
    return tuple(w.capitalize() for w in _pseudo_words(300, seed=1))


@lru_cache(maxsize=None)
def all_towns() -> tuple[str, ...]:
    names = {n.lower() for n in all_names()}
    return tuple(w.capitalize() for w in _pseudo_words(90, seed=2, syllables=(2, 3), avoid=names))


@lru_cache(maxsize=None)
def pools(split: str) -> dict[str, tuple[str, ...]]:
    """Entity pools of one split: names, towns, jobs, pets, colors, items (disjoint across splits)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    parts = {
        "names": _partition(all_names(), 11),
        "towns": _partition(all_towns(), 12),
        "jobs": _partition(JOBS, 13),
        "pets": _partition(PETS, 14),
        "colors": _partition(COLORS, 15),
        "items": _partition(ITEMS, 16),
    }
    return {kind: p[split] for kind, p in parts.items()}


def all_entities() -> dict[str, tuple[str, ...]]:
    """Every entity of every split (what the pretraining corpus may use)."""
    return {
        "names": all_names(), "towns": all_towns(), "jobs": JOBS, "pets": PETS, "colors": COLORS, "items": ITEMS,
    }


def split_templates(templates: dict[str, tuple[str, ...]], split: str) -> tuple[str, ...]:
    """The templates reserved for `split` (a dict split -> templates, disjoint by construction)."""
    return templates[split]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
