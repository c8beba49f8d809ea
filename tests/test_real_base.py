"""Exactness on real weights: SmolLM2-135M-Instruct (the cached real base, built
by `vllm_para.base_model.ensure_base` when missing) served by vLLM with PARA.

One offline engine, one batch mixing base requests and four adapters (the
issue's three: q,v,u r=12 last; q,k,v,g,u r=8 mean; q,v r=4 last; and the
well-conditioned mean_skip_first variant), chat prompts: vLLM's greedy tokens
equal the transformers reference's, and logprobs agree within
max(1e-4, 3 x the request's conditioning gap), where the gap is the largest
logprob change between the float32 reference and an equally valid float32
computation of the same thing:
- the float64 reference (every rounding error of the float32 one), and
- for whole-prompt pooling, the float32 reference with the pooled mean summed in
  another order (sequential, forwards and backwards).
The second is the perturbation that matters on this model: its first token's
hidden state (the attention sink) has a norm ~100x the others', so the mean's
rounding error is set by that one row and moves logprobs ~1e-3; a tolerance
below it would fail any correct float32 engine. mean_skip_first pools without
the sink and must stay within the plain rule. docs/exactness.md.
"""

from __future__ import annotations

import itertools

import pytest

from engine_support import chosen_logprobs, greedy_params, logprob_conditioning, make_llm, peft_greedy_and_logprobs

pytestmark = pytest.mark.engine

ALL = ("q", "k", "v", "g", "u")
MILD, STRONG = (0.005, 0.02), (0.02, 0.05)  # (W_down std, W_up std): vectors ~1 +- 0.1, and up to ~1 +- 7
# name -> (targets, pooling, r, scale)
SPECS = {
    "qvu_last_r12": (("q", "v", "u"), "last", 12, MILD),
    "all_mean_r8": (ALL, "mean", 8, MILD),
    "qv_last_r4": (("q", "v"), "last", 4, MILD),
    "all_meanskip_r8": (ALL, "mean_skip_first", 8, MILD),
    # strong adapters: float32 itself cannot settle mean pooling's tokens here (the float64 reference's greedy
    # tokens differ from the float32 one's), so these are compared by logprobs on vLLM's own tokens only
    "all_mean_r8_strong": (ALL, "mean", 8, STRONG),
    "all_meanskip_r8_strong": (ALL, "mean_skip_first", 8, STRONG),
}
IA3 = "ia3_default"  # a PEFT (IA)^3 adapter (PEFT's default Llama targets: k, v, down as feed-forward)
QUESTIONS = [
    "What is the capital of France?",
    "Passage: Mira Tollan was born in the town of Drosvik and later moved to Pellin to work as a baker. "
    "Question: In which town was Mira Tollan born? Answer with the town only.",
    "Write a SQL query that counts the rows of the table orders.",
]
MAX_TOKENS = 8
FLOOR, FACTOR = 1e-4, 3.0
# STRONG adapters (vectors up to 1 +- 7) amplify the engine's own float32 rounding, which the reference's
# float32-vs-float64 gap does not contain (different GEMM reduction order): on an AVX512-BF16 EPYC,
# 2026-12-04, the strong mean_skip_first adapter read 3.2-3.9x that gap (1.5-1.9e-4) with identical tokens
FACTOR_STRONG = 5.0


def is_strong(name) -> bool:
    return name in SPECS and SPECS[name][3] is STRONG


def serve_greedy(base, adapters, batch, max_model_len):
    """One offline engine, one `generate` of the whole batch [(prompt ids, adapter)]: (outputs, token ids)."""
    llm = make_llm(base, adapters, max_model_len=max_model_len)
    try:
        outs = llm.generate([{"prompt_token_ids": ids} for ids, _ in batch],
                            [greedy_params(n, MAX_TOKENS) for _, n in batch], use_tqdm=False)
    finally:
        del llm
    return outs, [list(o.outputs[0].token_ids) for o in outs]


def logprob_rows(ref, batch, outs, got, conditioning):
    """Per request: (adapter, largest |vLLM - reference| logprob, conditioning, tolerance), and their printed
    table. Tolerance: max(FLOOR, FACTOR x conditioning), FACTOR_STRONG for the strong adapters."""
    rows = []
    for (ids, name), out, g, c in zip(batch, outs, got, conditioning):
        err = max(abs(x - y) for x, y in zip(chosen_logprobs(out.outputs[0]), ref.sequence_logprobs(ids, g, name)))
        rows.append((name, err, c, max(FLOOR, (FACTOR_STRONG if is_strong(name) else FACTOR) * c)))
    report = "\n".join(f"{n!s:>16}: vLLM-ref {e:.2e}  conditioning {c:.2e}  tol {t:.2e}" for n, e, c, t in rows)
    print(report)
    return rows, report


def assert_within_tolerance(rows, report) -> None:
    for name, err, _conditioning, tol in rows:
        assert err <= tol, f"adapter={name}: vLLM is {err:.2e} from the reference, tolerance {tol:.2e}\n{report}"


@pytest.fixture(scope="module")
def real_base(tmp_path_factory):
    from vllm_para.base_model import ensure_base
    from testkit.tiny_models import build_random_adapter, build_random_ia3_adapter

    base = ensure_base()
    directory = tmp_path_factory.mktemp("real_adapters")
    adapters = {
        name: str(build_random_adapter(base, directory / name, r=r, targets=t, pooling=p, seed=41,
                                       down_std=scale[0], up_std=scale[1]))
        for name, (t, p, r, scale) in SPECS.items()
    }
    peft_model = build_random_ia3_adapter(base, directory / IA3, seed=5)
    adapters[IA3] = str(directory / IA3)
    return base, adapters, peft_model


def test_real_base_mixed_batch_matches_reference(real_base):
    from transformers import AutoTokenizer

    from vllm_para.training.reference import PARAReferenceModel

    base, adapters, peft_model = real_base
    tok = AutoTokenizer.from_pretrained(str(base))
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
               for q in QUESTIONS]
    prompts = [list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompts]
    batch = list(itertools.product(prompts, [*SPECS, IA3, None]))
    outs, got = serve_greedy(base, adapters, batch, max_model_len=1024)
    # the base answers the first question the way the model card says it does
    assert "Paris" in tok.decode(got[len(SPECS) + 1]), tok.decode(got[len(SPECS) + 1])

    ref = PARAReferenceModel.from_pretrained(base, adapters=adapters)
    want = ref.greedy([ids for ids, _ in batch], [n for _, n in batch], MAX_TOKENS, stop_at_eos=False)
    for (_ids, name), g, w in zip(batch, got, want):
        if is_strong(name):
            continue
        assert g == w.token_ids, f"adapter={name}: {tok.decode(g)!r} vs reference {tok.decode(w.token_ids)!r}"
    assert len({tuple(g) for g in got}) > len(prompts), "adapters changed nothing"

    conditioning = logprob_conditioning(base, adapters, batch, got)

    rows, report = logprob_rows(ref, batch, outs, got, conditioning)
    # the (IA)^3 rows against PEFT's own (unmerged) model
    for (ids, name), out, g, (_, _, _c, tol) in zip(batch, outs, got, rows):
        if name == IA3:
            want_ids, want_lp = peft_greedy_and_logprobs(peft_model, ids, MAX_TOKENS)
            assert g == want_ids, f"(IA)^3 on the real base: {tok.decode(g)!r} vs PEFT {tok.decode(want_ids)!r}"
            assert chosen_logprobs(out.outputs[0]) == pytest.approx(want_lp, abs=tol)
    assert_within_tolerance(rows, report)
    # mean pooling's conditioning is set by the sink token; leaving it out (mean_skip_first) fixes it
    worst = {n: max(c for m, _, c, _ in rows if m == n) for n in ("all_mean_r8_strong", "all_meanskip_r8_strong")}
    assert worst["all_meanskip_r8_strong"] < 3e-4, report
    assert worst["all_mean_r8_strong"] > 10 * worst["all_meanskip_r8_strong"], report


# --------------------------------------------------------------- Gemma-3 270M: the second real family
# Gemma-3's residual stream grows to norms of ~3e4 at the last token (one component up to ~2.8e4; SmolLM2's last
# token: ~200), so SmolLM2's MILD W_down would give vectors far from 1 here (the strong regime, where float32
# itself cannot settle logprobs): W_down is scaled down by the ratio of stream norms to keep these adapters mild.
GEMMA_MILD = (MILD[0] / 50, MILD[1])
GEMMA_SPECS = {k: (*SPECS[k][:3], GEMMA_MILD) for k in ("qvu_last_r12", "all_mean_r8", "qv_last_r4", "all_meanskip_r8")}
GEMMA_PROMPTS = [
    "The capital of France is",
    "Mira Tollan was born in the town of Drosvik and later moved to Pellin to work as a baker. Mira Tollan was born in",
    "SELECT COUNT(*) FROM orders; -- counts the rows of the table",
]


@pytest.mark.slow
def test_gemma3_real_base_mixed_batch_matches_reference(tmp_path):
    """Gemma-3 270M (from its PyPI chunk packages, converted once; sqrt(hidden)-scaled embeddings, q/k norms,
    sliding-window layers, head_dim 256): one batch of base requests and four adapters gives the reference's
    greedy tokens, and logprobs within max(1e-4, 3 x the request's conditioning)."""
    from transformers import AutoTokenizer

    from testkit.tiny_models import build_random_adapter
    from vllm_para.base_model import BaseModelError, ensure_base
    from vllm_para.training.reference import PARAReferenceModel

    try:
        base = ensure_base("gemma3-270m")
    except BaseModelError as exc:
        pytest.skip(str(exc))
    adapters = {name: str(build_random_adapter(base, tmp_path / name, r=r, targets=t, pooling=p, seed=43,
                                               down_std=scale[0], up_std=scale[1]))
                for name, (t, p, r, scale) in GEMMA_SPECS.items()}
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in base.iterdir()), "the converted files must be readable"
    assert (base / "GEMMA_TERMS.html").is_file(), "the model's terms travel with the checkpoint"
    tok = AutoTokenizer.from_pretrained(str(base))
    prompts = [tok(text)["input_ids"] for text in GEMMA_PROMPTS]
    assert all(ids[0] == tok.bos_token_id for ids in prompts), "the converted tokenizer must prepend <bos>"
    batch = list(itertools.product(prompts, [*GEMMA_SPECS, None]))
    outs, got = serve_greedy(base, adapters, batch, max_model_len=512)
    # pretrained, not instruction-tuned: fluent, not always right ("the capital of the country of France.")
    assert "France" in tok.decode(got[len(GEMMA_SPECS)]), tok.decode(got[len(GEMMA_SPECS)])

    ref = PARAReferenceModel.from_pretrained(base, adapters=adapters)
    want = ref.greedy([ids for ids, _ in batch], [n for _, n in batch], MAX_TOKENS, stop_at_eos=False)
    for (_ids, name), g, w in zip(batch, got, want):
        assert g == w.token_ids, f"adapter={name}: {tok.decode(g)!r} vs reference {tok.decode(w.token_ids)!r}"
    assert len({tuple(g) for g in got}) > len(prompts), "adapters changed nothing"
    conditioning = logprob_conditioning(base, adapters, batch, got, gemm_order=True)
    assert_within_tolerance(*logprob_rows(ref, batch, outs, got, conditioning))
