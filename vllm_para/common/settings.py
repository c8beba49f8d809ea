"""PARA engine settings, read from vLLM's `additional_config["para"]`.

    LLM(model=BASE, additional_config={"para": {"modules": {"sql": "/path/sql"},
                                                "max_adapters": 8}})
    vllm serve BASE --enable-para --para-modules sql=/path/sql --max-para-adapters 8

Runs in: every process (API server, engine core, workers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vllm_para.common.request import (  # noqa: F401 (re-exported)
    ADAPTER_KEY,
    CACHE_KEY,
    INTERNAL_KEYS,
    POOL_LEN_KEY,
    VERSION_KEY,
    PooledPrefix,
)

ADDITIONAL_CONFIG_KEY = "para"
# The request's PARA fields (vllm_para/common/request.py holds the codec and its keys):
REQUEST_ADAPTER_KEY = ADAPTER_KEY  # SamplingParams.extra_args key selecting the adapter: the only public one
REQUEST_POOL_LEN_KEY = POOL_LEN_KEY  # internal keys, written by admission only (a client sending any gets 400)
REQUEST_VERSION_KEY = VERSION_KEY
REQUEST_CACHE_KEY = CACHE_KEY
MAX_ADAPTER_NAME_LEN = 255  # characters, and bytes in UTF-8: a name is one path component under --para-adapter-dir


def path_component_problem(name: str) -> str | None:
    """Why `name` cannot be one file name on this file system (None when it can): the byte
    length limit (NAME_MAX, 255 on Linux), NUL, text that is not UTF-8 (lone surrogates)."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "must be valid Unicode text (it holds a lone surrogate)"
    if "\x00" in name:
        return "must not contain NUL"
    if size > MAX_ADAPTER_NAME_LEN:
        return f"must be at most {MAX_ADAPTER_NAME_LEN} bytes in UTF-8 (one file name), got {size} bytes"
    return None


def adapter_name_problem(name) -> str | None:
    """Why `name` cannot be a PARA adapter name (None when it can)."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not name or len(name) > MAX_ADAPTER_NAME_LEN:
        return f"must have 1..{MAX_ADAPTER_NAME_LEN} characters, got {len(name)}"
    problem = path_component_problem(name)
    if problem:
        return problem
    if any(c.isspace() or not c.isprintable() for c in name) or "=" in name or "/" in name or "\\" in name:
        return "must not contain whitespace, control characters, '=', '/' or '\\'"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    return None


class PARASettingsError(ValueError):
    pass


class PARASettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    modules: dict[str, str] = Field(
        default_factory=dict, description="adapter name -> adapter directory"
    )
    max_adapters: int = Field(
        default=8, ge=1, le=1024, description="device slots for VG weights (LRU-swapped)"
    )
    max_rank: int = Field(default=64, ge=1, le=4096, description="largest VG rank r a slot holds")
    adapter_dir: str | None = Field(
        default=None,
        description="directory of adapters loaded on first use: a request for NAME loads ADAPTER_DIR/NAME/",
    )
    max_cpu_adapters: int | None = Field(
        default=None, ge=1, le=1 << 20,
        description="host-cache bound for adapters loaded from adapter_dir (LRU; none with requests in flight "
        "is evicted); unbounded when unset",
    )
    load_timeout_s: float = Field(
        default=5.0, gt=0, le=3600,
        description="deadline for reading one adapter's files (a stuck mount fails that load, nothing else)",
    )
    max_pages: int | None = Field(
        default=None, ge=1, le=1 << 20,
        description="side-buffer pages: sequences holding PARA vectors, running or preempted "
        "(default 2 x max_num_seqs); a PARA request waits for a free page",
    )

    @field_validator("modules")
    @classmethod
    def _names(cls, modules: dict[str, str]) -> dict[str, str]:
        for name, path in modules.items():
            problem = adapter_name_problem(name)
            if problem:
                raise ValueError(f"invalid adapter name {name[:80]!r}: it {problem}")
            if not str(path):
                raise ValueError(f"adapter {name!r} has an empty path")
        return {name: str(Path(path).expanduser()) for name, path in modules.items()}

    @field_validator("adapter_dir")
    @classmethod
    def _dir(cls, path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path else None

    @classmethod
    def from_additional_config(cls, additional_config: Any) -> "PARASettings | None":
        """None when PARA is not enabled (no `para` key)."""
        if not isinstance(additional_config, dict) or ADDITIONAL_CONFIG_KEY not in additional_config:
            return None
        raw = additional_config[ADDITIONAL_CONFIG_KEY]
        if raw is True:
            raw = {}
        if not isinstance(raw, dict):
            raise PARASettingsError(
                f'additional_config["para"] must be an object like {{"modules": {{"name": "/path"}}}}, got {raw!r}'
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"para.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise PARASettingsError(f"invalid PARA settings in additional_config: {problems}") from exc


def page_capacity(settings: PARASettings, max_num_seqs: int) -> int:
    """Side-buffer pages; the scheduler admits PARA requests up to exactly this many."""
    return settings.max_pages or 2 * max_num_seqs


def parse_module_specs(specs: list[str]) -> dict[str, str]:
    """`["sql=/p/sql", "qa=/p/qa"]` (CLI form) -> {"sql": "/p/sql", "qa": "/p/qa"}."""
    modules: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise PARASettingsError(f"--para-modules entry {spec!r} must look like name=/path/to/adapter")
        if name in modules:
            raise PARASettingsError(f"--para-modules names {name!r} twice")
        modules[name] = path
    return modules
