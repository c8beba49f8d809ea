"""Helpers shared by the tests that start real vLLM engines (offline and server)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# name -> (targets, pooling, r): differing targets, poolings and ranks in one engine
ADAPTER_SPECS = {
    "sql": (("q", "v", "u"), "last", 12),
    "qa": (("q", "k", "v", "g", "u"), "mean", 12),
    "tone": (("v", "g"), "last", 8),
}

PROMPTS = [
    "select count of the table where city is red",
    "what is the price of one dog",
    "show the name of user",
    "how many cat run fast in the big city",
    "give me the max value",
]

ENGINE_KWARGS = dict(dtype="float32", gpu_memory_utilization=0.2, max_model_len=512, max_num_seqs=32, seed=0)


def build_adapters(base_model: Path, directory: Path) -> dict[str, str]:
    from vllm_para.testing.tiny_models import build_random_adapter

    paths = {}
    for i, (name, (targets, pooling, r)) in enumerate(ADAPTER_SPECS.items()):
        paths[name] = str(
            build_random_adapter(base_model, directory / name, r=r, targets=targets, pooling=pooling, seed=10 + i)
        )
    return paths


def make_llm(model: Path, adapters: dict[str, str] | None, compiled: bool = False, **kwargs):
    """An offline engine; eager unless `compiled` (the compiled forward: tests/test_engine_offline.py)."""
    from vllm import LLM

    engine_kwargs = {**ENGINE_KWARGS, "enforce_eager": not compiled, **kwargs}
    if adapters is not None:
        engine_kwargs["additional_config"] = {"para": {"modules": adapters, "max_adapters": 2}}
    return LLM(model=str(model), **engine_kwargs)


def token_prompts(model: Path, texts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    return [tok(t)["input_ids"] for t in texts]


def greedy_params(adapter: str | None, max_tokens: int = 12, **kwargs):
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=max_tokens, temperature=0.0, logprobs=1, ignore_eos=True,
        extra_args={"para_adapter": adapter} if adapter else None, **kwargs,
    )


def chosen_logprobs(completion) -> list[float]:
    return [step[tok].logprob for tok, step in zip(completion.token_ids, completion.logprobs)]


def para_stats(llm) -> dict:
    return llm.collective_rpc("para_stats")[0]


def logprob_tolerances(model, adapters, batch, completions, floor: float = 1e-5, factor: float = 10.0) -> list[float]:
    """Per-request logprob tolerance for comparing vLLM (float32) with the reference:
    `factor` x the reference's own float32-vs-float64 gap on the same tokens, at least
    `floor`. A fixed tolerance below that gap would test nothing; one far above it
    would hide real differences (e.g. between the slot and overflow VG paths)."""
    import torch

    from vllm_para.training.reference import PARAReferenceModel

    ref32 = PARAReferenceModel.from_pretrained(model, adapters=adapters)
    ref64 = PARAReferenceModel.from_pretrained(model, adapters=adapters, dtype=torch.float64)
    out = []
    for (ids, name), comp in zip(batch, completions):
        a = ref32.sequence_logprobs(ids, comp, name)
        b = ref64.sequence_logprobs(ids, comp, name)
        out.append(max(floor, factor * max(abs(x - y) for x, y in zip(a, b))))
    return out


def generate_counting_preemptions(llm, batch, max_tokens, **kwargs):
    """Greedy-generate `batch` [(prompt ids, adapter)]; return (outputs, preemptions, pages still in use)."""
    outs = llm.generate(
        [{"prompt_token_ids": ids} for ids, _ in batch],
        [greedy_params(n, max_tokens) for _, n in batch],
        use_tqdm=False, **kwargs,
    )
    preemptions = sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions" and hasattr(m, "value"))
    return outs, preemptions, para_stats(llm)["pages_in_use"]
