"""The transformers reference of PARA (vllm_para/training/reference.py) on tiny Llama and Gemma."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vllm_para import core
from vllm_para.adapter import PARAAdapter
from vllm_para.config import TARGET_ORDER, PARAConfigError
from vllm_para.training.reference import PROJECTIONS, PARAReferenceModel, VectorGenerator


@pytest.fixture(scope="module")
def loaded(tiny_llama, tiny_gemma):
    cache = {}

    def get(path) -> PARAReferenceModel:
        if path not in cache:
            cache[path] = PARAReferenceModel.from_pretrained(path).eval()
        return cache[path]

    return get


@pytest.fixture
def ref(loaded, tiny_model) -> PARAReferenceModel:
    m = loaded(tiny_model)
    for name in list(m.adapters):
        del m.adapters[name]
    return m


def randomize(vg: VectorGenerator, seed: int, std: float = 0.5) -> VectorGenerator:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        vg.down.copy_(torch.randn(vg.down.shape, generator=g) * 0.1)
        vg.up.copy_(torch.randn(vg.up.shape, generator=g) * std)
        vg.up_bias.copy_(1 + torch.randn(vg.up_bias.shape, generator=g) * std)
    return vg


def positions(mask):
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def batch(seed=0, vocab=300):
    """Rows: left-padded (2 pads), full, left-padded (4 pads)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    mask[2, :4] = 0
    ids[mask == 0] = 0
    return ids, mask


# ------------------------------------------------------------------ identity
def test_fresh_adapter_is_identity(ref):
    ids, mask = batch()
    base = ref.model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
    ref.add_adapter("fresh_last", targets=TARGET_ORDER)
    ref.add_adapter("fresh_mean", targets=("q", "v", "u"), pooling="mean")
    for names in (None, "fresh_last", ["fresh_mean", None, "fresh_last"]):
        out = ref(ids, mask, adapter_names=names).logits
        assert torch.equal(out, base), names


def test_nontrivial_adapter_changes_only_its_rows(ref):
    ids, mask = batch()
    base = ref(ids, mask).logits
    randomize(ref.add_adapter("a", targets=TARGET_ORDER), seed=1)
    out = ref(ids, mask, adapter_names=["a", None, None]).logits
    assert (out[0] - base[0]).abs().max() > 1e-2
    assert torch.equal(out[1:], base[1:])


def test_batch_mixing_equals_single_rows(ref):
    ids, mask = batch()
    randomize(ref.add_adapter("a"), seed=1)
    randomize(ref.add_adapter("b", targets=("k", "g"), pooling="mean"), seed=2)
    names = ["a", "b", None]
    out = ref(ids, mask, adapter_names=names).logits
    for b in range(3):
        keep = mask[b] == 1
        alone = ref(ids[b : b + 1, keep], adapter_names=[names[b]]).logits[0]
        torch.testing.assert_close(out[b, keep], alone, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- targets
def gelu_erf64(x):
    return 0.5 * x * (1 + torch.erf(x / 2**0.5))


def record_layer0(ref, ids, adapter_names):
    layer = ref.model.model.layers[0]
    seen, hooks = {}, []
    hooks.append(layer.register_forward_pre_hook(
        lambda m, a, k: seen.__setitem__("h", (a[0] if a else k["hidden_states"]).detach().clone()),
        with_kwargs=True,
    ))
    for t, (parent, child) in PROJECTIONS.items():
        mod = getattr(getattr(layer, parent), child)
        hooks.append(mod.register_forward_hook(lambda m, a, o, t=t: seen.__setitem__(t, o.detach().clone())))
    try:
        ref(ids, adapter_names=adapter_names)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("target", TARGET_ORDER)
def test_each_target_scales_exactly_its_projection(ref, target):
    ids = torch.randint(10, 300, (1, 7), generator=torch.Generator().manual_seed(3))
    vg = randomize(ref.add_adapter("one", targets=(target,)), seed=4)
    base = record_layer0(ref, ids, None)
    para = record_layer0(ref, ids, "one")
    assert torch.equal(base["h"], para["h"])
    # hand computation of layer 0's vector (float64): last prompt token of h
    p = base["h"][0, -1].double()
    down, up, bias = (x.detach().double() for x in vg.layer(0))
    vec = gelu_erf64(p @ down.T) @ up.T + bias
    assert vec.shape == (ref.shape.target_size(target),)
    torch.testing.assert_close(para[target].double(), base[target].double() * vec, rtol=1e-5, atol=1e-6)
    assert not torch.equal(para[target], base[target])
    # the other projections of layer 0 see the same inputs, except that the MLP
    # input depends on the attention output when an attention target is scaled
    unchanged = {"q", "k", "v", "g", "u"} - {target}
    if target in ("q", "k", "v"):
        unchanged -= {"g", "u"}
        assert not torch.equal(para["g"], base["g"])
    for t in unchanged:
        assert torch.equal(para[t], base[t]), t


# ------------------------------------------------------------------- pooling
@pytest.mark.parametrize("pooling", ["last", "mean", "mean_skip_first"])
def test_pooling_uses_exactly_the_prompt_tokens(ref, pooling):
    randomize(ref.add_adapter("a", targets=TARGET_ORDER, pooling=pooling), seed=5)
    g = torch.Generator().manual_seed(6)
    prompt = torch.randint(10, 300, (5,), generator=g)
    completion = torch.randint(10, 300, (3,), generator=g)
    L = ref.shape.num_hidden_layers

    def vectors(ids, mask, n):
        ref(ids, mask, prompt_lengths=n, adapter_names="a")
        return ref.last_vectors

    # row 0: left pad 2 + prompt + completion; row 1: prompt + completion + right pad 2
    seq = torch.cat([prompt, completion])
    ids = torch.zeros(2, 10, dtype=torch.long)
    mask = torch.zeros_like(ids)
    ids[0, 2:], mask[0, 2:] = seq, 1
    ids[1, :8], mask[1, :8] = seq, 1
    ref_vecs = vectors(ids, mask, [5, 5])
    alone = vectors(prompt.unsqueeze(0), None, None)  # the prompt alone, no pad, no completion
    for i in range(L):
        for t in TARGET_ORDER:
            for b in range(2):
                torch.testing.assert_close(ref_vecs[i][t][b], alone[i][t][0], rtol=1e-4, atol=1e-4)

    def changed(edit_row, edit_pos):
        ids2 = ids.clone()
        ids2[edit_row, edit_pos] = 3 if ids2[edit_row, edit_pos] != 3 else 4
        new = vectors(ids2, mask, [5, 5])
        return [any(not torch.equal(new[i][t][edit_row], ref_vecs[i][t][edit_row]) for t in TARGET_ORDER)
                for i in range(L)]

    assert not any(changed(0, 0))  # left pad
    assert not any(changed(1, 9))  # right pad
    assert not any(changed(0, 7))  # a completion token (left-padded row)
    assert not any(changed(1, 5))  # a completion token (right-padded row)
    assert all(changed(0, 6))  # the last prompt token: every layer
    first = changed(1, 0)  # the first prompt token
    if pooling == "mean":
        assert all(first)
    elif pooling == "mean_skip_first":  # layer 0 pools embeddings of tokens 1.. only
        assert first == [False] + [True] * (L - 1)
        assert all(changed(1, 1))  # the second prompt token is pooled at every layer
    else:  # layer 0 sees only the last token's embedding; later layers see the whole prompt
        assert first == [False] + [True] * (L - 1)


def test_last_and_mean_pooling_differ(ref):
    ids = torch.randint(10, 300, (1, 6), generator=torch.Generator().manual_seed(7))
    last = randomize(ref.add_adapter("last", targets=("q",)), seed=8)
    ref.add_adapter("mean", targets=("q",), pooling="mean", weights=last.weights())
    a = ref(ids, adapter_names="last").logits
    b = ref(ids, adapter_names="mean").logits
    assert (a - b).abs().max() > 1e-3


def test_invalid_prompt_lengths(ref):
    ids, mask = batch()
    with pytest.raises(ValueError, match="not all real tokens"):
        ref(ids, mask, prompt_lengths=[8, 9, 5])
    with pytest.raises(KeyError, match="unknown PARA adapter"):
        ref(ids, mask, adapter_names="nope")


# ------------------------------------------------------------------ generate
def test_generate_with_cache_matches_full_recompute(ref):
    randomize(ref.add_adapter("a"), seed=9, std=1.0)
    randomize(ref.add_adapter("b", targets=TARGET_ORDER, pooling="mean"), seed=10, std=1.0)
    prompts = [[11, 42, 77], [5, 6, 7, 8, 9, 10], [100, 200, 150, 30, 31, 32, 33, 34, 35]]
    names = ["a", None, "b"]
    steps = 8
    results = ref.greedy(prompts, names, max_new_tokens=steps, stop_at_eos=False)
    assert [len(r.token_ids) for r in results] == [steps] * 3
    # the three rows generate different continuations (adapters matter)
    base = ref.greedy(prompts, None, max_new_tokens=steps, stop_at_eos=False)
    assert [r.token_ids for r in results] != [r.token_ids for r in base]

    ids, mask = ref._left_pad(prompts)
    lengths = [len(p) for p in prompts]
    gen = torch.tensor([r.token_ids for r in results])
    for k in range(steps):
        full = torch.cat([ids, gen[:, :k]], dim=1)
        full_mask = torch.cat([mask, torch.ones_like(gen[:, :k])], dim=1)
        logits = ref(full, full_mask, prompt_lengths=lengths, adapter_names=names).logits[:, -1].float()
        assert torch.equal(logits.argmax(-1), gen[:, k]), k
        lp = torch.log_softmax(logits, -1).gather(1, gen[:, k : k + 1]).squeeze(1)
        torch.testing.assert_close(lp, torch.tensor([r.logprobs[k] for r in results]), rtol=1e-4, atol=1e-4)
    # teacher-forced logprobs of each row alone agree too
    for p, r, n in zip(prompts, results, names):
        torch.testing.assert_close(
            torch.tensor(ref.sequence_logprobs(p, r.token_ids, n)), torch.tensor(r.logprobs), rtol=1e-4, atol=1e-4
        )
        alone = ref.greedy([p], [n], max_new_tokens=steps, stop_at_eos=False)[0]
        assert alone.token_ids == r.token_ids
    assert ref._state is None


def test_greedy_eos_handling(ref):
    randomize(ref.add_adapter("a"), seed=15)
    full = ref.greedy([[5, 6, 7], [8, 9]], "a", max_new_tokens=5, stop_at_eos=False)
    assert [len(r.token_ids) for r in full] == [5, 5]
    gen_config = ref.model.generation_config
    saved = gen_config.eos_token_id
    gen_config.eos_token_id = full[0].token_ids[1]  # pretend the 2nd token of row 0 is EOS
    try:
        stopped = ref.greedy([[5, 6, 7], [8, 9]], "a", max_new_tokens=5)
        ignored = ref.greedy([[5, 6, 7], [8, 9]], "a", max_new_tokens=5, stop_at_eos=False)
    finally:
        gen_config.eos_token_id = saved
    assert stopped[0].token_ids == full[0].token_ids[:2]
    assert stopped[0].logprobs == pytest.approx(full[0].logprobs[:2], abs=1e-5)
    assert [r.token_ids for r in ignored] == [r.token_ids for r in full]


def test_any_adapter_name(ref):
    for name in ("train", "v1.2", "a%2Eb", "to"):
        ref.add_adapter(name, targets=("q",))
    assert set(ref.adapters) == {"train", "v1.2", "a%2Eb", "to"}
    assert "v1.2" in ref.adapters and "v1" not in ref.adapters
    assert isinstance(ref.adapters["v1.2"], VectorGenerator)
    assert ref(torch.tensor([[5, 6, 7]]), adapter_names="v1.2").logits.shape[0] == 1
    assert any(k.startswith("adapters.") for k in ref.state_dict())
    del ref.adapters["train"]
    assert "train" not in ref.adapters


def test_beam_search_and_sampling_shapes(ref):
    randomize(ref.add_adapter("a"), seed=11)
    randomize(ref.add_adapter("b", targets=("v", "g"), pooling="mean"), seed=12)
    ids, mask = ref._left_pad([[11, 42, 77], [5, 6, 7, 8, 9, 10], [100, 200]])
    names = ["a", None, "b"]
    common = dict(max_new_tokens=5, min_new_tokens=5, pad_token_id=ref.model.config.pad_token_id)
    beams = ref.generate(ids, mask, names, num_beams=3, num_return_sequences=2, do_sample=False, **common)
    assert beams.shape == (6, ids.shape[1] + 5)
    assert torch.equal(beams[:, : ids.shape[1]], ids.repeat_interleave(2, dim=0))
    vocab = ref.model.config.vocab_size
    assert int(beams.min()) >= 0 and int(beams.max()) < vocab
    assert next(iter(ref.last_vectors.values()))["q"].shape[0] == 9  # 3 prompts x 3 beams
    torch.manual_seed(0)
    sampled = ref.generate(ids, mask, names, do_sample=True, num_return_sequences=2, top_k=0, **common)
    assert sampled.shape == (6, ids.shape[1] + 5)
    assert torch.equal(sampled[:, : ids.shape[1]], ids.repeat_interleave(2, dim=0))
    assert ref._state is None


def test_fresh_adapter_beam_search_equals_base(ref):
    ref.add_adapter("fresh", targets=TARGET_ORDER)
    ids = torch.tensor([[11, 42, 77, 5]])
    kw = dict(max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=ref.model.config.pad_token_id)
    assert torch.equal(ref.generate(ids, None, "fresh", **kw), ref.model.generate(ids, **kw))


def test_generate_refuses_right_padding(ref):
    ids, mask = batch()
    with pytest.raises(ValueError, match="LEFT-padded"):
        ref.generate(ids, mask.flip(1), None, max_new_tokens=2)


# ------------------------------------------------------------ training, I/O
def test_differentiable_wrt_adapter_only(ref):
    vg = randomize(ref.add_adapter("train", targets=TARGET_ORDER, pooling="mean"), seed=13)
    ids, mask = batch()
    logits = ref(ids, mask, prompt_lengths=[4, 5, 3], adapter_names=["train", None, "train"]).logits
    F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
    for p in (vg.down, vg.up, vg.up_bias):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in ref.model.parameters())
    vg.zero_grad()


def test_from_pretrained_with_adapter_dirs(tiny_model, tmp_path):
    ref = PARAReferenceModel.from_pretrained(tiny_model)
    vg = randomize(ref.add_adapter("a", targets=("q", "u"), pooling="mean"), seed=14)
    vg.save(tmp_path / "a")
    again = PARAReferenceModel.from_pretrained(tiny_model, adapters={"a": tmp_path / "a"})
    assert again.adapters["a"].config == vg.config
    assert torch.equal(again.adapters["a"].up, vg.up)
    ids, mask = batch()
    assert torch.equal(again(ids, mask, adapter_names="a").logits, ref(ids, mask, adapter_names="a").logits)
    # constructing from PARAAdapter objects gives the same model
    third = PARAReferenceModel(again.model, {"a": PARAAdapter(vg.config, vg.weights())})
    assert torch.equal(third.adapters["a"].weights().up, vg.weights().up)


def test_adapter_for_another_base_model_is_refused(ref, tmp_path):
    bad = ref.default_config(targets=("q",)).model_copy(update={"hidden_size": 64})
    with pytest.raises(PARAConfigError, match="hidden_size=64"):
        ref.add_adapter("bad", bad)
    PARAAdapter(bad, core.init_vg_weights(bad)).save(tmp_path / "bad")
    with pytest.raises(PARAConfigError, match="hidden_size=64"):
        PARAReferenceModel.from_pretrained(ref.model.config._name_or_path, adapters={"bad": tmp_path / "bad"})
