"""Priority scheduling with forced preemptions while the side buffer is at
capacity: preempted PARA requests keep their pages, newcomers wait for one
(page-aware admission in the scheduler) instead of failing the engine."""

from __future__ import annotations

import pytest

from engine_support import (
    ADAPTER_SPECS, ENGINE_KWARGS, PROMPTS, generate_counting_preemptions, para_stats, token_prompts,
)

pytestmark = pytest.mark.engine


def test_priority_preemption_with_full_side_buffer(tiny_llama, adapters, reference):
    from vllm import LLM

    names = [*ADAPTER_SPECS, None]
    prompt_ids = token_prompts(tiny_llama, PROMPTS) * 3
    batch = [(ids, names[i % len(names)]) for i, ids in enumerate(prompt_ids)]
    max_tokens = 40
    # 4 pages for 4 running sequences: every preempted PARA request holding a page
    # makes a newcomer wait. 15 sequences of up to ~52 tokens need ~30 blocks of 32; give 8.
    llm = LLM(
        model=str(tiny_llama),
        **{**ENGINE_KWARGS, "max_num_seqs": 4, "max_model_len": 128}, enforce_eager=True,
        scheduling_policy="priority", enable_prefix_caching=False, num_gpu_blocks_override=8, block_size=32,
        disable_log_stats=False,
        additional_config={"para": {"modules": adapters, "max_adapters": 2, "max_pages": 4}},
    )
    try:
        assert para_stats(llm)["pages_capacity"] == 4
        # later prompts get higher priority (lower value): they overtake running ones
        outs, preemptions, pages_left = generate_counting_preemptions(
            llm, batch, max_tokens, priority=[len(batch) - i for i in range(len(batch))]
        )
    finally:
        del llm
    assert preemptions > 0, "the test did not force any preemption"
    assert pages_left == 0
    want = reference.greedy([ids for ids, _ in batch], [n for _, n in batch], max_tokens, stop_at_eos=False)
    for (_ids, name), out, w in zip(batch, outs, want):
        assert len(out.outputs[0].token_ids) == max_tokens
        assert list(out.outputs[0].token_ids) == w.token_ids, f"adapter={name}"
