"""The hostile-request case lists, shared by tests/test_hostile_server.py and
tests/soak.py (which draws 5% of its traffic from them): one place, so the
soak sends exactly what the suite checks.

Both servers run with the PARA adapters "sql" and "qa" loaded at start-up
(--para-modules) and a --para-adapter-dir for first-use loading; in the lists
below "sql" and "qa" name those two, and a model of None means the base model.
No vLLM import (the soak imports this before any engine starts).
"""

from __future__ import annotations

from typing import Callable

HUGE = "x" * 10_000

# (vllm_xargs, model or None for the base, expected status, words in the message);
# each is sent to /v1/completions, /v1/chat/completions and streamed /v1/completions
HOSTILE_XARGS = [
    ({"para_prompt_len": 100000}, "sql", 400, ["para_prompt_len", "reserved"]),
    ({"para_prompt_len": -1}, "sql", 400, ["para_prompt_len", "reserved"]),
    ({"para_prompt_len": "abc"}, "sql", 400, ["para_prompt_len", "reserved"]),
    ({"para_prompt_len": 2}, "sql", 400, ["para_prompt_len", "reserved"]),
    ({"para_prompt_len": 3}, None, 400, ["para_prompt_len", "reserved"]),
    ({"para_version": 1}, "sql", 400, ["para_version", "reserved"]),
    ({"para_version": "zzz"}, "qa", 400, ["para_version", "reserved"]),
    ({"para_cache_key": "qa@1:x"}, "sql", 400, ["para_cache_key", "reserved"]),
    ({"para_cache_key": HUGE}, None, 400, ["para_cache_key", "reserved"]),
    ({"para_adapter": 123}, None, 400, ["para_adapter"]),
    ({"para_adapter": 1.5}, None, 400, ["para_adapter"]),
    ({"para_adapter": True}, None, 400, ["para_adapter"]),
    ({"para_adapter": ["sql"]}, None, 400, []),
    ({"para_adapter": {"a": 1}}, None, 400, []),
    ({"para_adapter": ""}, None, 400, ["para_adapter"]),
    ({"para_adapter": HUGE}, None, 400, ["para_adapter", "characters"]),
    ({"para_adapter": "sq l"}, None, 400, ["para_adapter"]),
    ({"para_adapter": "../sql"}, None, 400, ["para_adapter"]),
    ({"para_adapter": "\x00"}, None, 400, ["para_adapter"]),
    ({"para_adapter": "ünïcødé-名前"}, None, 404, ["not loaded", "Available adapters"]),
    ({"para_adapter": "qa"}, "sql", 400, ["name different PARA adapters"]),
    ({"para_adapter": "nope"}, None, 404, ["Available adapters"]),
]

# `model` values that are no adapter: 400 or 404, and the answer is under 5,000 characters
HOSTILE_MODEL_NAMES = [HUGE, "ünïcødé", "sql\n", "../../etc/passwd", "a" * 257, "SQL"]

# Over the file system's name limit (255 bytes in UTF-8): answered 500 from an OSError before.
# Each is a 400 naming "255" as `model` (completions, chat), as vllm_xargs.para_adapter, and as para_name.
LONG_NAMES = ["L" * 256, "\u00e9" * 200, "\u20ac" * 86]
LONG_NAME_IDS = ["ascii-256", "e-acute-200", "euro-86"]

# Names that are no single path component inside --para-adapter-dir: 400 on first use
FIRST_USE_BAD_NAMES = ("../sql", "t1/../t2", "..", "a\\b")


def field_type_bodies(body: Callable[..., dict], prompt: str) -> list[dict]:
    """/v1/completions bodies with a field of the wrong type or range: each a 4xx.
    `body(model, prompt, **extra)` builds a valid completion body."""
    return [
        body("sql", prompt, vllm_xargs="para_adapter=sql"),
        body("sql", prompt, vllm_xargs=["para_adapter"]),
        body("sql", prompt, max_tokens=-1),
        body("sql", prompt, n="two"),
        {"model": 5, "prompt": prompt},
        body("sql", prompt, vllm_xargs={"para_adapter": "sql", "para_prompt_len": [1, 2]}),
    ]


def bad_admin_load_bodies(sql_path: str) -> list[dict]:
    """/v1/load_para_adapter bodies that are a 4xx ("sql" is loaded, from `sql_path`)."""
    return [
        {"para_name": "a/b", "para_path": sql_path},
        {"para_name": "", "para_path": sql_path},
        {"para_name": HUGE[:5000], "para_path": sql_path},
        {"para_name": "x", "para_path": HUGE[:5000]},
        {"para_name": "x", "para_path": ""},
        {"para_name": 5, "para_path": sql_path},
        {"para_name": "x"},
        {"para_name": "x", "para_path": sql_path, "extra": 1},
        {"para_name": "sql", "para_path": sql_path},  # already loaded
        {"para_name": "x", "para_path": "/nonexistent/dir"},
    ]


# /v1/unload_para_adapter bodies and the statuses they must get
BAD_UNLOADS = [
    ({"para_name": "never-loaded"}, (404,)),
    ({"para_name": 5}, (400, 422)),
]
