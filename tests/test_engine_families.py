"""PARA on every supported vLLM decoder family, by wrapping layers.

For each family (tiny checkpoint built locally with the family's own features
on: Llama-3 rope scaling, Gemma-2 final soft-capping / sliding window / extra
norms, Gemma-3 q/k norms and local rope, Qwen-2 q/k/v bias, Qwen-3 q/k norms):
- greedy tokens of a batch mixing 3 adapters (different targets, poolings,
  ranks) and base requests equal the transformers reference;
- logprobs agree within a tolerance scaled by the reference's own float32 vs
  float64 gap on the same tokens (a tolerance below that gap tests nothing);
- on the same engine: batch invariance, prefix-cache hits (the batch again, reversed) and
  beam-search scores under the original prompt's vectors (forced preemption and TP=2 need
  other engine settings: tests/test_engine_preemption.py, tests/test_engine_tp.py on Llama);
- the decoder layers are vLLM's own classes (only `input_layernorm`,
  `qkv_proj`, `gate_up_proj` are wrapped), and for the families whose forward
  has family-specific features, base requests in a PARA engine equal a plain
  vLLM engine token for token and logprob for logprob.
"""

from __future__ import annotations

import itertools

import pytest

from engine_support import (
    ADAPTER_SPECS, PROMPTS, build_adapters, chosen_logprobs, greedy_params, logprob_tolerances, make_llm, para_stats,
    token_prompts,
)

pytestmark = pytest.mark.engine

FAMILIES = ["llama3", "mistral", "gemma", "gemma2", "gemma3", "qwen2", "qwen3"]
# Distinctive forwards (post-norms, soft-capping, sliding window; q/k norms), also compared with a
# plain vLLM engine; the others are compared with the reference, which plain vLLM matches.
PLAIN_ENGINE_CHECK = {"gemma2", "qwen3"}
MAX_TOKENS = 10


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    from testkit.tiny_models import build_tiny_model

    model = build_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param)
    adapters = build_adapters(model, tmp_path_factory.mktemp(f"{request.param}_adapters"))
    return request.param, model, adapters


def test_family_mixed_adapters_match_reference(family):
    from vllm_para.training.reference import PARAReferenceModel

    arch, model, adapters = family
    prompt_ids = token_prompts(model, PROMPTS[:3])
    batch = list(itertools.product(prompt_ids, [*ADAPTER_SPECS, None]))
    llm = make_llm(model, adapters, enforce_eager=True)  # compiled path: test_engine_offline (same wrappers)
    try:
        outs = _generate(llm, batch)
        layers = para_stats(llm)["layers"]
        # the engine-level guarantees, on the same engine: batch invariance, prefix-cache hits, beam scores
        alone = {i: _generate(llm, [batch[i]])[0] for i in (0, len(batch) - 2)}
        again = _generate(llm, batch[::-1])[::-1]  # every prompt's KV is in the prefix cache now
        beams = _beam_search(llm, prompt_ids[1], "qa")
    finally:
        del llm
    # vLLM's own decoder-layer class and forward run; PARA only wrapped three modules per layer
    assert layers["decoder_layer_classes"] and all(c.startswith("vllm.model_executor.models.")
                                                    for c in layers["decoder_layer_classes"]), layers
    assert layers["wrapped"] == ["input_layernorm", "self_attn.qkv_proj", "mlp.gate_up_proj"]

    reference = PARAReferenceModel.from_pretrained(model, adapters=adapters)
    want = reference.greedy([ids for ids, _ in batch], [n for _, n in batch], MAX_TOKENS, stop_at_eos=False)
    got = [list(o.outputs[0].token_ids) for o in outs]
    for (_ids, name), g, w in zip(batch, got, want):
        assert g == w.token_ids, f"{arch}: adapter={name}"
    assert len({tuple(g) for g in got}) > len(prompt_ids), f"{arch}: adapters changed nothing (degenerate fixture)"
    tolerances = logprob_tolerances(model, adapters, batch, got)
    for (_ids, name), out, w, tol in zip(batch, outs, want, tolerances):
        assert chosen_logprobs(out.outputs[0]) == pytest.approx(w.logprobs, abs=tol), f"{arch}: adapter={name}"

    for i, out in alone.items():  # batch invariance
        assert list(out.outputs[0].token_ids) == got[i], f"{arch}: {batch[i][1]} alone"
        assert chosen_logprobs(out.outputs[0]) == pytest.approx(chosen_logprobs(outs[i].outputs[0]), abs=1e-5)
    assert [list(o.outputs[0].token_ids) for o in again] == got, f"{arch}: prefix-cache hits changed tokens"
    assert len(beams.sequences) == 3
    for beam in beams.sequences:  # beam scores under the original prompt's vectors
        completion = beam.tokens[len(prompt_ids[1]):]
        want_score = sum(reference.sequence_logprobs(prompt_ids[1], completion, "qa"))
        assert beam.cum_logprob == pytest.approx(want_score, abs=1e-3), f"{arch}: beam {beam.tokens}"


def _generate(llm, batch):
    return llm.generate([{"prompt_token_ids": ids} for ids, _ in batch],
                        [greedy_params(n, MAX_TOKENS) for _, n in batch], use_tqdm=False)


def _beam_search(llm, ids, adapter):
    from vllm.sampling_params import BeamSearchParams

    import vllm_para

    params = BeamSearchParams(beam_width=3, max_tokens=5, ignore_eos=True, length_penalty=0.0)
    return vllm_para.beam_search(llm, [{"prompt_token_ids": ids}], params, adapters=[adapter])[0]


# `make test-slow` (two engines per family, ~80 s each); make test checks llama's in test_engine_offline
@pytest.mark.slow
def test_family_base_requests_equal_plain_engine(family):
    arch, model, adapters = family
    if arch not in PLAIN_ENGINE_CHECK:
        pytest.skip("checked against the reference above; plain-engine comparison runs for the distinctive forwards")
    prompts = [{"prompt_token_ids": ids} for ids in token_prompts(model, PROMPTS)]
    results = []
    for with_para in (True, False):
        llm = make_llm(model, adapters if with_para else None, enforce_eager=True)
        try:
            outs = llm.generate(prompts, [greedy_params(None, MAX_TOKENS)] * len(prompts), use_tqdm=False)
        finally:
            del llm
        results.append([(list(o.outputs[0].token_ids), chosen_logprobs(o.outputs[0])) for o in outs])
    para, plain = results
    for (tp, lp), (tq, lq) in zip(para, plain):
        assert tp == tq
        assert lp == pytest.approx(lq, abs=1e-6)
