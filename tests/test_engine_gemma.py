"""PARA on vLLM's Gemma: mixed adapters in one batch equal the reference."""

from __future__ import annotations

import itertools

import pytest

from engine_support import ADAPTER_SPECS, PROMPTS, build_adapters, chosen_logprobs, greedy_params, make_llm, token_prompts

pytestmark = pytest.mark.engine


def test_gemma_mixed_adapters_match_reference(tiny_gemma, tmp_path):
    from vllm_para.reference import PARAReferenceModel

    adapters = build_adapters(tiny_gemma, tmp_path)
    prompt_ids = token_prompts(tiny_gemma, PROMPTS[:3])
    batch = list(itertools.product(prompt_ids, [*ADAPTER_SPECS, None]))
    llm = make_llm(tiny_gemma, adapters)
    try:
        outs = llm.generate(
            [{"prompt_token_ids": ids} for ids, _ in batch], [greedy_params(n) for _, n in batch], use_tqdm=False
        )
    finally:
        del llm
    reference = PARAReferenceModel.from_pretrained(tiny_gemma, adapters=adapters)
    want = reference.greedy([ids for ids, _ in batch], [n for _, n in batch], 12, stop_at_eos=False)
    for (ids, name), out, w in zip(batch, outs, want):
        got = out.outputs[0]
        assert list(got.token_ids) == w.token_ids, f"adapter={name}"
        assert chosen_logprobs(got) == pytest.approx(w.logprobs, abs=1e-4)
