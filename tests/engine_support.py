"""Helpers shared by the tests that start real vLLM engines (offline and server)."""

from __future__ import annotations

import contextlib
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
    from testkit.tiny_models import build_random_adapter

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


def sequential_mean(reverse: bool):
    """`core.pool_prompts` with whole-prompt means summed one row at a time, forwards or backwards:
    another equally valid float32 summation order (the perturbation analysis of mean pooling)."""
    import torch

    from vllm_para import core

    def pool(hidden, starts, ends, mode):
        if mode == "last":
            return core.pool_prompts(hidden, starts, ends, mode)
        first = 1 if mode == "mean_skip_first" else 0
        rows = []
        for s, e in zip(starts, ends):
            block = hidden[s + first if e - s > 1 else s:e].float()
            block = block.flip(0) if reverse else block
            acc = torch.zeros_like(block[0])
            for row in block:
                acc = acc + row
            rows.append(acc / block.shape[0])
        return torch.stack(rows)

    return pool


@contextlib.contextmanager
def split_k_linear(parts: int = 2):
    """Within the block, every `F.linear` (the reference's projections and LM head) sums its inner
    dimension in `parts` chunks: another equally valid float32 reduction order. An engine's GEMM library
    (oneDNN in vLLM-CPU) blocks the reduction its own way, so this is the perturbation that bounds
    how far two correct float32 engines may differ where the reference's float64 gap does not
    (a residual stream with a few huge components feeding a VG that amplifies them)."""
    import torch.nn.functional as F

    original = F.linear

    def linear(x, weight, bias=None):
        bounds = [weight.shape[-1] * i // parts for i in range(parts + 1)]
        out = sum(original(x[..., lo:hi], weight[:, lo:hi]) for lo, hi in zip(bounds, bounds[1:]) if hi > lo)
        return out if bias is None else out + bias

    F.linear = linear
    try:
        yield
    finally:
        F.linear = original


def logprob_tolerances(model, adapters, batch, completions, floor: float = 1e-5, factor: float = 10.0) -> list[float]:
    """Per-request logprob tolerance for comparing vLLM (float32) with the reference:
    `factor` x the request's conditioning (`logprob_conditioning`), at least `floor`."""
    return [max(floor, factor * c) for c in logprob_conditioning(model, adapters, batch, completions)]


def logprob_conditioning(model, adapters, batch, completions, gemm_order: bool = False) -> list[float]:
    """Per request (prompt ids, adapter name) and its completion: the largest
    logprob change between the float32 reference and an equally valid float32 computation: the
    float64 reference, and for whole-prompt pooling the mean summed in another order (on Gemma's
    sqrt(hidden)-scaled embeddings that order alone moves a mean-pooled q,k,v,g,u adapter by
    ~6e-5, more than its float64 gap). A fixed tolerance below that would test nothing; one far
    above it would hide real differences (e.g. between the slot and overflow VG paths)."""
    import torch

    from vllm_para import core
    from vllm_para.training.reference import PARAReferenceModel

    ref32 = PARAReferenceModel.from_pretrained(model, adapters=adapters)
    ref64 = PARAReferenceModel.from_pretrained(model, adapters=adapters, dtype=torch.float64)
    pooling = {name: ref32.adapters[name].config.pooling for name in ref32.adapters}

    def gap(a, b):
        return max(abs(x - y) for x, y in zip(a, b))

    out = []
    for (ids, name), comp in zip(batch, completions):
        a = ref32.sequence_logprobs(ids, comp, name)
        worst = gap(a, ref64.sequence_logprobs(ids, comp, name))
        if name is not None and pooling[name] != "last":
            for reverse in (False, True):
                ref32.pool_fn = sequential_mean(reverse)
                worst = max(worst, gap(a, ref32.sequence_logprobs(ids, comp, name)))
            ref32.pool_fn = core.pool_prompts
        for parts in (2, 3) if gemm_order else ():
            with split_k_linear(parts):
                worst = max(worst, gap(a, ref32.sequence_logprobs(ids, comp, name)))
        out.append(worst)
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


def peft_greedy_and_logprobs(model, ids: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
    """PEFT's own greedy continuation of `ids` and the logprob of each generated token."""
    import torch

    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=0)
        tokens = out[0, len(ids):].tolist()
        logits = model(input_ids=out).logits[0].float()
    logprobs = torch.log_softmax(logits[len(ids) - 1:-1], dim=-1)
    return tokens, logprobs.gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1).tolist()
