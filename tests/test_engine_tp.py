"""tensor_parallel_size=2 (two CPU workers): vectors shard with the heads and
FFN columns, and outputs equal tensor_parallel_size=1 (which equals the reference)."""

from __future__ import annotations

import os

import pytest

from engine_support import PROMPTS, build_adapters, chosen_logprobs, greedy_params, make_llm, token_prompts

pytestmark = pytest.mark.engine


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPU cores for 2 workers")
def test_tensor_parallel_2_equals_1(tiny_llama, tmp_path, monkeypatch):
    from vllm_para.reference import PARAReferenceModel

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per worker
    adapters = build_adapters(tiny_llama, tmp_path)
    names = ["sql", "qa", "tone", None, "sql"]
    prompt_ids = token_prompts(tiny_llama, PROMPTS)
    llm = make_llm(tiny_llama, adapters, tensor_parallel_size=2)
    try:
        outs = llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_ids], [greedy_params(n) for n in names], use_tqdm=False
        )
    finally:
        del llm
    reference = PARAReferenceModel.from_pretrained(tiny_llama, adapters=adapters)
    want = reference.greedy(prompt_ids, names, 12, stop_at_eos=False)
    for name, out, w in zip(names, outs, want):
        assert list(out.outputs[0].token_ids) == w.token_ids, f"adapter={name}"
        assert chosen_logprobs(out.outputs[0]) == pytest.approx(w.logprobs, abs=1e-4)
