"""tensor_parallel_size=2 / pipeline_parallel_size=2 (two CPU workers): vectors
shard with the heads and FFN columns (TP) or with the layers (PP: each rank
holds vectors and VG slots for its own layers only), and outputs equal one
worker (which equals the reference)."""

from __future__ import annotations

import os

import pytest

from engine_support import PROMPTS, build_adapters, chosen_logprobs, greedy_params, make_llm, token_prompts

pytestmark = pytest.mark.engine


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPU cores for 2 workers")
@pytest.mark.parametrize("parallel", [{"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}], ids=["tp2", "pp2"])
def test_parallel_2_equals_1(tiny_llama, tmp_path, monkeypatch, parallel):
    from vllm_para.training.reference import PARAReferenceModel

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per worker
    adapters = build_adapters(tiny_llama, tmp_path)
    names = ["sql", "qa", "tone", None, "sql"]
    prompt_ids = token_prompts(tiny_llama, PROMPTS)
    # vLLM-CPU 0.32 cannot run PP=2 eager (a later rank's intermediate-tensor buffers are only
    # allocated by the compiled path: `assert self.intermediate_tensors is not None`), plain vLLM included.
    pp = "pipeline_parallel_size" in parallel
    llm = make_llm(tiny_llama, adapters, compiled=pp, distributed_executor_backend="mp", **parallel)
    try:
        outs = llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_ids], [greedy_params(n) for n in names], use_tqdm=False
        )
        ranks = llm.collective_rpc("para_stats")
    finally:
        del llm
    if "pipeline_parallel_size" in parallel:  # each rank wrapped and sized for its own layers only
        spans = sorted((r["layers"]["first"], r["layers"]["end"]) for r in ranks)
        assert spans == [(0, 1), (1, 2)], spans
        # the tiny model's 2 layers, one per rank: per-sequence vectors of 1 layer (fp32, width q+2kv+2i)
        assert all(r["bytes_per_sequence"] == 4 * (128 + 2 * 64 + 2 * 256) for r in ranks), ranks
    reference = PARAReferenceModel.from_pretrained(tiny_llama, adapters=adapters)
    want = reference.greedy(prompt_ids, names, 12, stop_at_eos=False)
    for name, out, w in zip(names, outs, want):
        assert list(out.outputs[0].token_ids) == w.token_ids, f"adapter={name}"
        assert chosen_logprobs(out.outputs[0]) == pytest.approx(w.logprobs, abs=1e-4)
