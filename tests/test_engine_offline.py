"""PARA in a real vLLM engine (CPU, torch.compile on), against the transformers reference.

Engines are shared per module: each costs ~20-60 s to start on CPU.
"""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from engine_support import (
    logprob_tolerances,
    ADAPTER_SPECS,
    PROMPTS,
    chosen_logprobs,
    greedy_params,
    make_llm,
    para_stats,
    token_prompts,
)

pytestmark = pytest.mark.engine

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def llm(tiny_llama, adapters):
    engine = make_llm(tiny_llama, adapters, compiled=True)
    yield engine
    del engine


@pytest.fixture(scope="module")
def prompt_ids(tiny_llama):
    return token_prompts(tiny_llama, PROMPTS)


def _mixed_batch(prompt_ids):
    """Every prompt with every adapter and with none: one batch of 20 requests."""
    names = [*ADAPTER_SPECS, None]
    return [(ids, name) for ids, name in itertools.product(prompt_ids, names)]


def _generate(llm, batch, max_tokens=MAX_TOKENS):
    outs = llm.generate(
        [{"prompt_token_ids": ids} for ids, _ in batch],
        [greedy_params(name, max_tokens) for _, name in batch],
        use_tqdm=False,
    )
    return [o.outputs[0] for o in outs]


def test_mixed_adapters_match_reference(llm, reference, prompt_ids, tiny_llama, adapters):
    batch = _mixed_batch(prompt_ids)
    got = _generate(llm, batch)
    want = reference.greedy([ids for ids, _ in batch], [n for _, n in batch], MAX_TOKENS, stop_at_eos=False)
    # Tolerances from the reference's own float32-vs-float64 gap: the engine runs 3 adapters
    # through 2 slots, so some take the overflow VG path; both must be as exact as float32 allows.
    tolerances = logprob_tolerances(tiny_llama, adapters, batch, [list(g.token_ids) for g in got])
    for (ids, name), g, w, tol in zip(batch, got, want, tolerances):
        assert list(g.token_ids) == w.token_ids, f"adapter={name} prompt={ids}"
        assert chosen_logprobs(g) == pytest.approx(w.logprobs, abs=tol), f"adapter={name} tol={tol:.2e}"
    # adapters really change outputs
    by_name = {}
    for (ids, name), g in zip(batch, got):
        by_name.setdefault(tuple(ids), {})[name] = list(g.token_ids)
    assert any(len({tuple(v) for v in d.values()}) > 1 for d in by_name.values())


def test_batch_invariance(llm, prompt_ids):
    batch = _mixed_batch(prompt_ids)
    together = _generate(llm, batch)
    for i in (0, 6, 13, 19):
        alone = _generate(llm, [batch[i]])[0]
        assert list(alone.token_ids) == list(together[i].token_ids)
        # float32 GEMMs of 1 row and of 20 rows accumulate in different orders (oneDNN picks the
        # blocking by shape and CPU): 1.1e-5 apart on some CPUs, so 5e-5, far below any real difference
        assert chosen_logprobs(alone) == pytest.approx(chosen_logprobs(together[i]), abs=5e-5)


def test_one_params_object_shared_across_prompts_is_not_written(llm, prompt_ids):
    """Admission writes PARA's internal keys on the request's own copy of the params (the one
    vLLM's input processor makes), never on the caller's object shared by every prompt."""
    params = greedy_params("sql", MAX_TOKENS)
    before = dict(params.extra_args)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    assert params.extra_args == before and not params.skip_reading_prefix_cache
    separate = _generate(llm, [(ids, "sql") for ids in prompt_ids])
    assert [list(o.outputs[0].token_ids) for o in outs] == [list(o.token_ids) for o in separate]


def test_unknown_adapter_fails_alone(llm, prompt_ids):
    from vllm.exceptions import VLLMNotFoundError

    with pytest.raises(VLLMNotFoundError, match=r"'nope' is not loaded.*Available adapters: \['qa', 'sql', 'tone'\]"):
        _generate(llm, [(prompt_ids[0], "nope")])
    out = _generate(llm, [(prompt_ids[0], "sql")])[0]
    assert len(out.token_ids) == MAX_TOKENS


def test_seeded_sampling_n_reproducible(llm, prompt_ids):
    from vllm import SamplingParams

    def run():
        sp = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=8, extra_args={"para_adapter": "qa"})
        return [list(c.token_ids)
                for c in llm.generate([{"prompt_token_ids": prompt_ids[1]}], sp, use_tqdm=False)[0].outputs]

    first, second = run(), run()
    assert first == second
    assert len(first) == 3 and len({tuple(s) for s in first}) > 1


def test_shared_prefix_different_endings(llm, reference, tiny_llama):
    prefix = "the user name city price item date value " * 6
    texts = [prefix + end for end in ("red cat", "blue dog", "red cat run")]
    ids = token_prompts(tiny_llama, texts)
    batch = [(p, "sql") for p in ids] + [(p, "qa") for p in ids] + [(p, None) for p in ids]
    first = _generate(llm, batch)  # fills the prefix cache
    again = _generate(llm, batch[::-1])[::-1]  # hits it
    want = reference.greedy([p for p, _ in batch], [n for _, n in batch], MAX_TOKENS, stop_at_eos=False)
    for a, b, w in zip(first, again, want):
        assert list(a.token_ids) == w.token_ids == list(b.token_ids)


def test_beam_search_scores_under_original_prompt(llm, reference, prompt_ids):
    from vllm.sampling_params import BeamSearchParams

    import vllm_para

    params = BeamSearchParams(beam_width=3, max_tokens=6, ignore_eos=True, length_penalty=0.0)
    prompts = [{"prompt_token_ids": prompt_ids[0]}, {"prompt_token_ids": prompt_ids[3]}]
    names = ["sql", "qa"]
    outputs = vllm_para.beam_search(llm, prompts, params, adapters=names)
    for ids, name, out in zip(prompt_ids[:1] + prompt_ids[3:4], names, outputs):
        assert len(out.sequences) == 3
        for beam in out.sequences:
            completion = beam.tokens[len(ids):]
            assert beam.tokens[: len(ids)] == ids and len(completion) == 6
            want = sum(reference.sequence_logprobs(ids, completion, name))
            assert beam.cum_logprob == pytest.approx(want, abs=1e-3)
        hf = reference.generate(
            torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), adapter_names=[name],
            num_beams=3, max_new_tokens=6, min_new_tokens=6, do_sample=False, length_penalty=0.0,
        )
        assert out.sequences[0].tokens == hf[0].tolist()


def test_no_page_leak_after_1000_requests_and_aborts(llm, prompt_ids):
    from vllm import SamplingParams

    names = [*ADAPTER_SPECS, None]
    prompts = [{"prompt_token_ids": prompt_ids[i % len(prompt_ids)]} for i in range(1000)]
    params = [
        SamplingParams(max_tokens=2, temperature=0.0,
                       extra_args={"para_adapter": names[i % 4]} if names[i % 4] else None)
        for i in range(1000)
    ]
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert len(outs) == 1000 and all(len(o.outputs[0].token_ids) == 2 for o in outs)
    assert para_stats(llm)["pages_in_use"] == 0

    engine = llm.llm_engine
    ids = [f"abort-{i}" for i in range(8)]
    for i, rid in enumerate(ids):
        engine.add_request(rid, prompts[i],
                           SamplingParams(max_tokens=200, ignore_eos=True, extra_args={"para_adapter": "sql"}))
    for _ in range(3):
        engine.step()
    assert para_stats(llm)["pages_in_use"] == 8
    engine.abort_request(ids)
    while engine.has_unfinished_requests():
        engine.step()
    # The engine core tells the worker about aborted requests on its next
    # scheduler pass, which it runs on its own: wait for it (bounded).
    deadline = time.monotonic() + 30
    while para_stats(llm)["pages_in_use"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert para_stats(llm)["pages_in_use"] == 0


def test_more_adapters_than_slots_swap_lru(llm, prompt_ids):
    stats = para_stats(llm)
    assert stats["pages_capacity"] >= 32 and stats["bytes_per_sequence"] > 0
    assert sorted(stats["adapters"]) == sorted(ADAPTER_SPECS)  # 3 adapters, max_adapters=2
    first = {name: _generate(llm, [(prompt_ids[0], name)])[0].token_ids for name in ADAPTER_SPECS}
    loads = para_stats(llm)["slot_loads"]
    for name in ["sql", "qa", "tone"] * 2:  # cycling 3 adapters through 2 LRU slots: every one misses
        assert _generate(llm, [(prompt_ids[0], name)])[0].token_ids == first[name]
    assert para_stats(llm)["slot_loads"] == loads + 6


@pytest.fixture(scope="module")
def plain_llm(tiny_llama):
    engine = make_llm(tiny_llama, adapters=None, compiled=True)
    yield engine
    del engine


def test_base_requests_equal_plain_engine(llm, plain_llm, prompt_ids):
    batch = [(ids, None) for ids in prompt_ids]
    para_engine = _generate(llm, batch + [(ids, "sql") for ids in prompt_ids])[: len(batch)]
    plain = _generate(plain_llm, batch)
    for a, b in zip(para_engine, plain):
        assert list(a.token_ids) == list(b.token_ids)
        assert chosen_logprobs(a) == chosen_logprobs(b)  # bit-identical: unit vectors multiply by exactly 1


def test_plain_engine_refuses_para_requests(plain_llm, prompt_ids):
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="PARA is not enabled"):
        _generate(plain_llm, [(prompt_ids[0], "sql")])
