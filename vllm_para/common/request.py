"""PARA's fields of one request: a frozen record with one reader and one writer.

A PARA request travels through vLLM as plain entries of
`SamplingParams.extra_args` (the only per-request channel vLLM ships from the
API server through the engine core to the workers):

- `para_adapter`: the adapter's name, the one field a client sends
  (`vllm_xargs` in the OpenAI API, `extra_args` offline);
- `para_version`, `para_prompt_len`, `para_cache_key`: written by admission
  (`api/admission.py`) only, on a private copy of the params; a
  client sending any of them gets 400.

Every module that reads these fields once the HTTP layer or admission checked
them reads them here (`PARARequest.of`), and admission and beam search write
them here (`PARARequest.written`). Only the checks of what a client sent
(`api/admission.check_extra_args`, `api/openai_models.py`) read
the raw dict: they decide whether those values may become a `PARARequest`.

Runs in: every process (API server, engine core, workers).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

ADAPTER_KEY = "para_adapter"  # the only public field
POOL_LEN_KEY = "para_prompt_len"  # pool over the first N prompt tokens (always set by admission)
VERSION_KEY = "para_version"  # which load of the adapter admitted the request
CACHE_KEY = "para_cache_key"  # prefix-cache key: adapter name, load version, digest, pooled tokens
INTERNAL_KEYS = (POOL_LEN_KEY, VERSION_KEY, CACHE_KEY)


class PooledPrefix(int):
    """Trusted in-process marker: "pool this PARA request over its first N prompt
    tokens" (beam search scores every beam under the original prompt's vectors).
    Only code in this process can build one; a client's JSON cannot, so a
    client-sent `para_prompt_len` is refused at admission."""


@dataclass(frozen=True)
class PARARequest:
    """What a request asks of PARA. `adapter` is None for a base-model request;
    the other fields are None until admission wrote them."""

    adapter: str | None = None
    version: int | None = None
    pool_len: int | None = None
    cache_key: str | None = None

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any] | None) -> "PARARequest":
        """Read the record from an `extra_args` dict (None or empty: a base request).
        An empty adapter name selects no adapter, as it always has."""
        if not extra:
            return _BASE
        adapter = extra.get(ADAPTER_KEY) or None
        if adapter is None:
            return _BASE
        version, pool_len = extra.get(VERSION_KEY), extra.get(POOL_LEN_KEY)
        return cls(
            adapter=str(adapter),
            version=None if version is None else int(version),
            pool_len=None if pool_len is None else int(pool_len),
            cache_key=extra.get(CACHE_KEY),
        )

    @classmethod
    def of(cls, sampling_params) -> "PARARequest":
        """Read the record from a `SamplingParams` (or anything with `extra_args`; None: a base request)."""
        return cls.from_extra(getattr(sampling_params, "extra_args", None))

    @classmethod
    def beam(cls, adapter: str, original_prompt_len: int) -> "PARARequest":
        """One beam's request (vllm-para's beam search): the adapter, pooled over the original prompt."""
        return cls(adapter=adapter, pool_len=PooledPrefix(original_prompt_len))

    @property
    def selects_adapter(self) -> bool:
        return self.adapter is not None

    def written(self, extra: Mapping[str, Any] | None) -> dict[str, Any]:
        """A new `extra_args` dict: `extra`'s entries with this record's fields set
        (fields that are None are left as `extra` has them)."""
        out = dict(extra or {})
        for key, value in ((ADAPTER_KEY, self.adapter), (VERSION_KEY, self.version),
                           (POOL_LEN_KEY, self.pool_len), (CACHE_KEY, self.cache_key)):
            if value is not None:
                out[key] = value
        return out


_BASE = PARARequest()


def prefix_cache_key(adapter: str, version: int, digest: str, tokens: Sequence[int], pool_len: int) -> str:
    """The prefix-cache key of an admitted PARA request: the adapter's load (name,
    version, file digest) and the sha256 of the prompt tokens its vectors pool.
    KV blocks computed under one key are never reused under another."""
    pooled = hashlib.sha256(repr(list(tokens[:pool_len])).encode()).hexdigest()
    return f"{adapter}@{version}:{digest}:{pooled}"


def needs_vg(request: PARARequest, already_filled: bool) -> bool:
    """Whether this request's PARA vectors are computed in the step that schedules
    it: it selects an adapter and its side-buffer page was not filled before (a
    preempted request keeps its vectors and is recomputed without the VG). The one
    rule the worker's step planner (`PARARuntime.plan_step`) and the CUDA-graph
    guard (`graph_guard.step_needs_vg`) both apply."""
    return request.selects_adapter and not already_filled
