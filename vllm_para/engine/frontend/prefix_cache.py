"""Prefix-cache keys for PARA requests.

A PARA request's KV depends on its vectors, which depend on its adapter and on
its whole prompt. vLLM chains block hashes from the first block, so adding one
key to the first block (as vLLM does for `cache_salt`) makes a PARA block hit
only for the same adapter (same load) and the same pooled prompt tokens.
"""

from __future__ import annotations

import functools
import hashlib

from vllm_para.engine.frontend.settings import (
    REQUEST_ADAPTER_KEY,
    REQUEST_CACHE_KEY,
    REQUEST_POOL_LEN_KEY,
)


def para_block_key(request) -> tuple | None:
    """("para", cache key, sha256 of the pooled prompt tokens), or None for base requests."""
    cached = getattr(request, "_para_block_key", False)
    if cached is not False:
        return cached
    params = getattr(request, "sampling_params", None)
    extra = (params.extra_args or {}) if params is not None else {}
    key = None
    tokens = getattr(request, "prompt_token_ids", None)
    if extra.get(REQUEST_ADAPTER_KEY) and tokens is not None:
        # Admission wrote both keys (plain int / str) and refused token-less prompts.
        pooled_len = extra.get(REQUEST_POOL_LEN_KEY)
        pooled = tokens[:pooled_len] if isinstance(pooled_len, int) else tokens
        digest = hashlib.sha256(repr(list(pooled)).encode()).hexdigest()
        key = ("para", str(extra.get(REQUEST_CACHE_KEY) or extra[REQUEST_ADAPTER_KEY]), digest)
    request._para_block_key = key
    return key


def _wrap(original):
    @functools.wraps(original)
    def generate_block_hash_extra_keys(request, start_token_idx, end_token_idx, start_mm_idx):
        keys, next_mm_idx = original(request, start_token_idx, end_token_idx, start_mm_idx)
        if start_token_idx == 0:
            key = para_block_key(request)
            if key is not None:
                keys = (keys or ()) + (key,)
        return keys, next_mm_idx

    return generate_block_hash_extra_keys


def install_prefix_cache_keys() -> None:
    from vllm.v1.core import kv_cache_utils

    from vllm_para.patching import wrap_attribute

    wrap_attribute(kv_cache_utils, "generate_block_hash_extra_keys", _wrap)
