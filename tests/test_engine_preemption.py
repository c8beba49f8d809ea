"""Forced preemption with prefix caching off: outputs still equal the reference
(whose vectors come from the original prompt only)."""

from __future__ import annotations

import pytest

from engine_support import (
    ADAPTER_SPECS, PROMPTS, build_adapters, generate_counting_preemptions, make_llm, token_prompts,
)

pytestmark = pytest.mark.engine


def test_preemption_and_no_prefix_cache_match_reference(tiny_llama, tmp_path):
    from vllm_para.training.reference import PARAReferenceModel

    adapters = build_adapters(tiny_llama, tmp_path)
    names = [*ADAPTER_SPECS, None]
    prompt_ids = token_prompts(tiny_llama, PROMPTS) * 2
    batch = [(ids, names[i % len(names)]) for i, ids in enumerate(prompt_ids)]
    max_tokens = 48
    # 10 sequences of up to ~60 tokens need ~20 blocks of 32; give the KV cache 8.
    llm = make_llm(
        tiny_llama, adapters, enable_prefix_caching=False, num_gpu_blocks_override=8, block_size=32, max_model_len=128,
        disable_log_stats=False,
    )
    try:
        outs, preemptions, pages_left = generate_counting_preemptions(llm, batch, max_tokens)
    finally:
        del llm
    assert preemptions > 0, "the test did not force any preemption"
    assert pages_left == 0
    reference = PARAReferenceModel.from_pretrained(tiny_llama, adapters=adapters)
    want = reference.greedy([ids for ids, _ in batch], [n for _, n in batch], max_tokens, stop_at_eos=False)
    for (_ids, name), out, w in zip(batch, outs, want):
        assert list(out.outputs[0].token_ids) == w.token_ids, f"adapter={name}"
