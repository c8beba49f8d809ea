"""Prefix-cache keys for PARA requests.

A PARA request's KV depends on its vectors, which depend on its adapter and on
its whole prompt. vLLM chains block hashes from the first block, so adding one
key to the first block (as vLLM does for `cache_salt`) makes a PARA block hit
only for the same adapter (same load) and the same pooled prompt tokens.

Runs in: the engine-core process.
"""

from __future__ import annotations

import functools

from vllm_para.common.request import PARARequest, prefix_cache_key


def para_block_key(request) -> tuple | None:
    """("para", the request's prefix-cache key), or None for base requests. Admission
    wrote the key (adapter load and the sha256 of the pooled prompt tokens,
    `common.request.prefix_cache_key`), so this reads one field and hashes nothing."""
    para = PARARequest.of(getattr(request, "sampling_params", None))
    if not para.selects_adapter:
        return None
    if para.cache_key is not None:
        return ("para", para.cache_key)
    tokens = getattr(request, "prompt_token_ids", None)  # not admitted (cannot happen): key it safely anyway
    if tokens is None:
        return None
    return ("para", prefix_cache_key(para.adapter, -1, "", tokens, para.pool_len or len(tokens)))


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
