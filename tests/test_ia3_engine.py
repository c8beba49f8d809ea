"""PEFT (IA)^3 adapters served by vLLM through PARA's path, mixed with PARA adapters and base
requests in one batch, exact against PEFT's own model (not merged): greedy tokens equal, and
logprobs within the family tests' conditioning rule (engine_support.logprob_tolerances).

Families: Llama-3 and Qwen-2 (q/k/v bias: (IA)^3 scales k and v outputs including it)."""

from __future__ import annotations

import itertools

import pytest

from engine_support import (
    PROMPTS, chosen_logprobs, greedy_params, logprob_tolerances, make_llm, para_stats, peft_greedy_and_logprobs,
    token_prompts,
)

pytestmark = pytest.mark.engine

MAX_TOKENS = 8
# name -> PEFT IA3Config fields: PEFT's default Llama targets (k, v, down as feed-forward), and
# q, v plus up scaled as an output
IA3_SPECS = {
    "ia3_kvd": {},
    "ia3_qvu": {"target_modules": ["q_proj", "v_proj", "up_proj"], "feedforward_modules": []},
}
PARA_SPECS = {"para_qvu": (("q", "v", "u"), "last", 8), "para_kg_mean": (("k", "g"), "mean_skip_first", 4)}


@pytest.mark.parametrize("arch", ["llama3", "qwen2"])
def test_ia3_and_para_mixed_batch_exact(arch, tmp_path):
    from testkit.tiny_models import build_random_adapter, build_random_ia3_adapter, build_tiny_model
    from vllm_para.training.reference import PARAReferenceModel

    model = build_tiny_model(tmp_path / "base", arch=arch)
    peft_models, adapters = {}, {}
    for i, (name, fields) in enumerate(IA3_SPECS.items()):
        peft_models[name] = build_random_ia3_adapter(model, tmp_path / name, seed=20 + i, **fields)
        adapters[name] = str(tmp_path / name)
    for i, (name, (targets, pooling, r)) in enumerate(PARA_SPECS.items()):
        adapters[name] = str(build_random_adapter(model, tmp_path / name, r=r, targets=targets, pooling=pooling,
                                                  seed=30 + i))
    prompt_ids = token_prompts(model, PROMPTS[:3])
    batch = list(itertools.product(prompt_ids, [*adapters, None]))
    llm = make_llm(model, adapters)
    try:
        outs = llm.generate([{"prompt_token_ids": ids} for ids, _ in batch],
                            [greedy_params(n, MAX_TOKENS) for _, n in batch], use_tqdm=False)
        kinds = para_stats(llm).get("adapters_by_kind")
    finally:
        del llm
    got = [list(o.outputs[0].token_ids) for o in outs]
    assert kinds == {"ia3": 2, "para": 2}, kinds

    reference = PARAReferenceModel.from_pretrained(model, adapters={n: adapters[n] for n in PARA_SPECS})
    tolerances = logprob_tolerances(model, adapters, batch, got)
    for (ids, name), out, g, tol in zip(batch, outs, got, tolerances):
        if name in IA3_SPECS:  # PEFT's own model is the reference
            want, want_lp = peft_greedy_and_logprobs(peft_models[name], ids, MAX_TOKENS)
        else:
            w = reference.greedy([ids], [name], MAX_TOKENS, stop_at_eos=False)[0]
            want, want_lp = w.token_ids, w.logprobs
        assert g == want, f"{arch}: adapter={name}"
        assert chosen_logprobs(out.outputs[0]) == pytest.approx(want_lp, abs=tol), f"{arch}: adapter={name}"
    ia3_rows = {tuple(g) for (ids, n), g in zip(batch, got) if n in IA3_SPECS}
    base_rows = {tuple(g) for (ids, n), g in zip(batch, got) if n is None}
    assert ia3_rows - base_rows, f"{arch}: the (IA)^3 adapters changed nothing (degenerate fixture)"
