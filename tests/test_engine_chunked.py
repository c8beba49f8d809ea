"""Base tenants keep chunked prefill in a PARA engine; PARA prompts are prefilled
in one step. With a 64-token step budget, a 150-token base prompt can only run
chunked, while PARA prompts run whole (the runner's invariant check would fail
the engine otherwise); outputs of both equal the reference, and a PARA prompt
longer than the step budget is refused at admission."""

from __future__ import annotations

import random

import pytest

from engine_support import ENGINE_KWARGS, greedy_params, para_stats

pytestmark = pytest.mark.engine

STEP_TOKENS = 64


def test_base_prompts_chunked_para_prompts_whole(tiny_llama, adapters, reference):
    from vllm import LLM
    from vllm.exceptions import VLLMValidationError

    rng = random.Random(0)
    long_base = [rng.randrange(10, 500) for _ in range(150)]
    para_prompts = [[rng.randrange(10, 500) for _ in range(n)] for n in (40, 55, 30)]
    batch = [(long_base, None), (para_prompts[0], "sql"), (long_base[:90], None), (para_prompts[1], "qa"),
             (para_prompts[2], "tone")]
    llm = LLM(
        model=str(tiny_llama), **ENGINE_KWARGS, enforce_eager=True, enable_chunked_prefill=True,
        max_num_batched_tokens=STEP_TOKENS,
        additional_config={"para": {"modules": adapters, "max_adapters": 2}},
    )
    try:
        outs = llm.generate(
            [{"prompt_token_ids": ids} for ids, _ in batch], [greedy_params(n, 8) for _, n in batch], use_tqdm=False
        )
        with pytest.raises(VLLMValidationError, match="max_num_batched_tokens=64"):
            llm.generate([{"prompt_token_ids": long_base[:100]}], [greedy_params("sql", 4)], use_tqdm=False)
        pages_left = para_stats(llm)["pages_in_use"]
    finally:
        del llm
    assert pages_left == 0
    want = reference.greedy([ids for ids, _ in batch], [n for _, n in batch], 8, stop_at_eos=False)
    for (ids, name), out, w in zip(batch, outs, want):
        assert list(out.outputs[0].token_ids) == w.token_ids, f"adapter={name} prompt_len={len(ids)}"
