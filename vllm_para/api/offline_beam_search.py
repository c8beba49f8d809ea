"""Beam search with PARA adapters on an offline `LLM`.

vLLM's `LLM.beam_search` issues one single-token request per beam per step,
whose prompt is the original prompt plus the beam's tokens, and carries no
`extra_args`. PARA must score every beam under the vectors of the *original*
prompt, so this entry point tags each original prompt (through its
`cache_salt`, which vLLM carries into every beam's prompt) and gives each beam
request its adapter and the original prompt length to pool over.

Runs in: the process that builds an offline `LLM`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from vllm_para.common.request import PARARequest

_SALT_PREFIX = "para-beam:"


def beam_search(llm, prompts: Sequence, params, adapters: Sequence[str | None] | None = None, **kwargs):
    """Like `llm.beam_search(prompts, params)`, with one PARA adapter (or None) per prompt.

    Returns vLLM's `list[BeamSearchOutput]`.
    """
    adapters = list(adapters) if adapters is not None else [None] * len(prompts)
    if len(adapters) != len(prompts):
        raise ValueError(f"adapters has {len(adapters)} entries for {len(prompts)} prompts; give one per prompt.")
    run_id = uuid.uuid4().hex
    tagged, tag_adapter = [], {}
    for i, (prompt, adapter) in enumerate(zip(prompts, adapters)):
        prompt = {"prompt": prompt} if isinstance(prompt, str) else dict(prompt)
        tag = f"{_SALT_PREFIX}{run_id}:{i}"
        user_salt = prompt.get("cache_salt")
        prompt["cache_salt"] = f"{tag}|{user_salt}" if user_salt else tag
        tagged.append(prompt)
        tag_adapter[tag] = adapter
    original_len: dict[str, int] = {}

    original_run = llm._render_and_run_requests

    def run_with_adapters(*, prompts, params, **run_kwargs):
        prompts = list(prompts)
        params = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        new_params = []
        for prompt, p in zip(prompts, params):
            tag = (prompt.get("cache_salt") or "").split("|", 1)[0]
            adapter = tag_adapter.get(tag)
            tokens = prompt.get("prompt_token_ids") or []
            original_len.setdefault(tag, len(tokens))  # a beam's first step is its original prompt
            if adapter is None:
                new_params.append(p)
                continue
            p = p.clone()
            p.extra_args = PARARequest.beam(adapter, original_len[tag]).written(p.extra_args)
            new_params.append(p)
        return original_run(prompts=prompts, params=new_params, **run_kwargs)

    llm._render_and_run_requests = run_with_adapters
    try:
        return llm.beam_search(tagged, params, **kwargs)
    finally:
        del llm._render_and_run_requests  # back to the class method
