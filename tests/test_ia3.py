"""PEFT (IA)^3 adapters as PARA adapters (vllm_para.ia3): exact against PEFT's own
model, every refusal, and a mixed batch in the reference. No vLLM engine."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from vllm_para import core
from vllm_para.adapter import PARAAdapterError, load_adapter
from vllm_para.config import ModelShape
from vllm_para.adapter import load_ia3_adapter
from vllm_para.ia3 import (
    IA3_CONFIG,
    IA3Adapter,
    adapter_kind,
    ia3_to_para,
    is_ia3_dir,
    module_names,
    parse_ia3_bytes,
    tensor_key,
)

peft = pytest.importorskip("peft")

ATOL = 1e-5


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from testkit.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("ia3_llama3"), arch="llama3")


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    from testkit.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("ia3_qwen2"), arch="qwen2")


def _base(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _shape(path) -> ModelShape:
    from transformers import AutoConfig

    return ModelShape.from_hf_config(AutoConfig.from_pretrained(str(path)))


def make_ia3(base_path, directory, seed=0, **config):
    from testkit.tiny_models import build_random_ia3_adapter

    return build_random_ia3_adapter(base_path, directory, seed=seed, **config)


def _reference(base_path, adapters: dict):
    from vllm_para.training.reference import PARAReferenceModel

    return PARAReferenceModel(_base(base_path), adapters).eval()


def _prompts(vocab: int, n: int, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(8, vocab, (n, length), generator=gen)


def _peft_greedy(model, reference, prompts, max_new_tokens=8):
    """HF generate on PEFT's model, called exactly as PARAReferenceModel.greedy calls it."""
    ids, mask = reference._left_pad(prompts)
    out = model.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
        min_new_tokens=0, eos_token_id=[], pad_token_id=reference.model.config.pad_token_id,
        output_logits=True, return_dict_in_generate=True,
    )
    new = out.sequences[:, ids.shape[1]:]
    logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
    return new.tolist(), logprobs.gather(2, new.unsqueeze(2)).squeeze(2)


# (arch, IA3Config kwargs, PARA targets expected, PEFT modules per layer)
CASES = {
    # PEFT's default for Llama: k, v outputs and down_proj's input (= up's output)
    "llama_default": ("llama", {}, ("k", "v", "u"), 3),
    "llama_qv": ("llama", dict(target_modules=["q_proj", "v_proj"], feedforward_modules=[]), ("q", "v"), 2),
    # gate and up as outputs, plus down as feed-forward: up and down multiply into u
    "llama_gate_up_down": (
        "llama", dict(target_modules=["gate_proj", "up_proj", "down_proj"], feedforward_modules=["down_proj"]),
        ("g", "u"), 3,
    ),
    # a regex (PEFT fullmatches it), and a layer subset: layer 1 gets ones for k and v
    "llama_regex_subset": (
        "llama", dict(target_modules=r"model\.layers\.0\.self_attn\.(k|v)_proj|.*\.mlp\.down_proj",
                      feedforward_modules=r".*down_proj"),
        ("k", "v", "u"), None,
    ),
    # Qwen2: q/k/v carry a bias, which PEFT scales with the output (so does PARA)
    "qwen2_default": ("qwen2", {}, ("q", "v", "u"), 3),
    "qwen2_kqv_up": (
        "qwen2", dict(target_modules=["q_proj", "k_proj", "v_proj", "up_proj"], feedforward_modules=[]),
        ("q", "k", "v", "u"), 4,
    ),
}


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_against_peft(case, llama, qwen2, tmp_path):
    arch, cfg, targets, per_layer = CASES[case]
    base = {"llama": llama, "qwen2": qwen2}[arch]
    directory = tmp_path / "ia3"
    peft_model = make_ia3(base, directory, seed=hash(case) % 1000, **cfg)
    assert is_ia3_dir(directory) and adapter_kind(directory) == "ia3"

    converted = load_ia3_adapter(directory, _shape(base))
    assert isinstance(converted, IA3Adapter) and converted.kind == "ia3"
    c = converted.config
    assert c.targets == targets and c.r == 1 and c.pooling == "last"
    assert torch.count_nonzero(converted.weights.down) == 0 and torch.count_nonzero(converted.weights.up) == 0
    if per_layer is not None:
        assert len(converted.modules) == per_layer * c.num_hidden_layers
    if case == "llama_regex_subset":  # layer 1's k and v are not scaled: exactly ones
        sizes = c.split_sizes()
        assert torch.equal(converted.weights.up_bias[1, : sizes["k"] + sizes["v"]], torch.ones(sizes["k"] + sizes["v"]))

    reference = _reference(base, {"ia3": converted.adapter})
    vocab = reference.model.config.vocab_size
    ids = _prompts(vocab, 3, 12, seed=1)
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        got = reference(ids, adapter_names="ia3").logits
        base_logits = reference(ids).logits
    assert (want - base_logits).abs().max() > 1e-2  # the adapter does change the output
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)

    prompts = [ids[0, :12].tolist(), ids[1, :7].tolist(), ids[2, :3].tolist()]  # left padding too
    want_tokens, want_lp = _peft_greedy(peft_model, reference, prompts)
    got = reference.greedy(prompts, "ia3", max_new_tokens=8, stop_at_eos=False)
    assert [g.token_ids for g in got] == want_tokens
    torch.testing.assert_close(torch.tensor([g.logprobs for g in got]), want_lp, atol=ATOL, rtol=0)


def test_saved_and_expanded_forms_are_the_same_adapter(llama, tmp_path):
    """The converted adapter saves and reloads as an ordinary PARA adapter, and the
    engine's all-five-targets layout (core.expand_to_all_targets) gives the same vectors."""
    make_ia3(llama, tmp_path / "ia3", seed=3)
    converted = load_ia3_adapter(tmp_path / "ia3", _shape(llama))
    reloaded = load_adapter(converted.adapter.save(tmp_path / "para"), base_shape=_shape(llama))
    assert reloaded.config == converted.config
    for a, b in zip((reloaded.weights.down, reloaded.weights.up, reloaded.weights.up_bias),
                    (converted.weights.down, converted.weights.up, converted.weights.up_bias)):
        assert torch.equal(a, b)
    full = core.expand_to_all_targets(converted.weights, converted.config)
    sizes = core.full_layout_sizes(converted.config.shape)
    pooled = torch.randn(4, converted.config.hidden_size)
    for i in range(converted.config.num_hidden_layers):
        own = core.split_vectors(core.vg_forward(pooled, *converted.weights.layer(i)), converted.config.split_sizes())
        every = core.split_vectors(core.vg_forward(pooled, *full.layer(i)), sizes)
        for t, v in every.items():
            expected = own[t] if t in own else torch.ones_like(v)
            assert torch.equal(v, expected), (i, t)
            # static: the same vector for every prompt, equal to the saved (IA)^3 vector
            assert torch.equal(v, v[:1].expand_as(v))


# -------------------------------------------------------- the mixed batch
def test_mixed_batch_equals_each_alone_and_peft(llama, tmp_path):
    from peft import PeftModel

    from testkit.tiny_models import build_random_adapter

    shape = _shape(llama)
    make_ia3(llama, tmp_path / "a", seed=11)  # k, v, down (ff)
    make_ia3(llama, tmp_path / "b", seed=12, target_modules=["q_proj", "gate_proj", "up_proj"], feedforward_modules=[])
    build_random_adapter(llama, tmp_path / "para", targets=("q", "k", "u"), seed=5)
    adapters = {
        "a": load_ia3_adapter(tmp_path / "a", shape).adapter,
        "b": load_ia3_adapter(tmp_path / "b", shape).adapter,
        "para": load_adapter(tmp_path / "para", base_shape=shape),
    }
    reference = _reference(llama, adapters)
    rows = ["a", None, "b", "para", None, "b", "a"]
    ids = _prompts(reference.model.config.vocab_size, len(rows), 10, seed=7)
    with torch.no_grad():
        mixed = reference(ids, adapter_names=rows).logits
        for b, name in enumerate(rows):
            alone = reference(ids[b : b + 1], adapter_names=[name]).logits[0]
            # batch of 7 vs 1: BLAS sums in another order (test_reference's rule). A PARA row's
            # vectors depend on its prompt, so the VG carries that order noise of the pooled state
            # into every scaled projection (test_reference's 1e-4 rule for VG outputs): on an AVX2
            # CPU this random adapter's row moved 2.2e-5 against 2.5-4.0e-6 for the other rows.
            atol = 1e-4 if name == "para" else ATOL
            torch.testing.assert_close(mixed[b], alone, atol=atol, rtol=1e-5)
        for name in ("a", "b"):
            model = PeftModel.from_pretrained(_base(llama), str(tmp_path / name)).eval()
            want = model(input_ids=ids).logits
            for b in (i for i, r in enumerate(rows) if r == name):
                torch.testing.assert_close(mixed[b], want[b], atol=ATOL, rtol=0)
        assert not torch.allclose(mixed[0], mixed[1], atol=1e-3)  # a, base and b all differ
        assert not torch.allclose(mixed[2], mixed[1], atol=1e-3)

    prompts = [ids[b, : 4 + b].tolist() for b in range(len(rows))]
    together = reference.greedy(prompts, rows, max_new_tokens=6, stop_at_eos=False)
    for b, name in enumerate(rows):
        alone = reference.greedy([prompts[b]], [name], max_new_tokens=6, stop_at_eos=False)[0]
        assert together[b].token_ids == alone.token_ids
        assert max(abs(x - y) for x, y in zip(together[b].logprobs, alone.logprobs)) < ATOL


def test_trainer_ia3_output_loads(llama, tmp_path):
    """`python -m vllm_para.training.train --method ia3` writes an adapter this loader
    serves, with PEFT's exact output."""
    from peft import PeftModel

    from vllm_para.training.datasets import make_toy_dataset
    from vllm_para.training.train import TrainArgs, train

    data = make_toy_dataset(tmp_path / "toy.jsonl", n=8, seed=0)
    args = TrainArgs(base_model=str(llama), data=data, output=tmp_path / "out", method="ia3", max_steps=2,
                     batch_size=4, lr=5e-2, save_steps=0, device="cpu", progress=False, logging_steps=1)
    train(args)
    converted = load_ia3_adapter(args.output, _shape(llama))
    assert converted.config.targets == ("k", "v", "u")
    assert (converted.weights.up_bias - 1).abs().max() > 1e-3  # trained away from ones
    model = PeftModel.from_pretrained(_base(llama), str(args.output)).eval()
    reference = _reference(llama, {"t": converted.adapter})
    ids = _prompts(reference.model.config.vocab_size, 2, 9, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(reference(ids, adapter_names="t").logits, model(input_ids=ids).logits,
                                   atol=ATOL, rtol=0)


# ------------------------------------------------------------------ refusals
SHAPE = ModelShape(num_hidden_layers=2, hidden_size=16, q_size=16, kv_size=8, intermediate_size=32)
OUT = {"q_proj": 16, "k_proj": 8, "v_proj": 8, "o_proj": 16, "gate_proj": 32, "up_proj": 32, "down_proj": 16,
       "lm_head": 50}
IN = {"q_proj": 16, "k_proj": 16, "v_proj": 16, "o_proj": 16, "gate_proj": 16, "up_proj": 16, "down_proj": 32,
      "lm_head": 16}


def _config(**fields):
    base = {"peft_type": "IA3", "task_type": "CAUSAL_LM", "base_model_name_or_path": "tiny",
            "target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"],
            "fan_in_fan_out": False, "modules_to_save": None, "exclude_modules": None, "inference_mode": True,
            "init_ia3_weights": True, "peft_version": "0.21.2", "revision": None, "auto_mapping": None}
    return {**base, **fields}


def _tensors(modules: dict[str, bool], layers=(0, 1), seed=0):
    """What PEFT saves for {short module name: feed-forward} on SHAPE."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i in layers:
        for short, ff in modules.items():
            part = "self_attn" if short in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            shape = (1, IN[short]) if ff else (OUT[short], 1)
            out[tensor_key(f"model.layers.{i}.{part}.{short}")] = 1 + 0.3 * torch.randn(shape, generator=gen)
    return out


DEFAULT_TENSORS = {"k_proj": False, "v_proj": False, "down_proj": True}


def _refused(config, tensors, match):
    with pytest.raises(PARAAdapterError, match=match):
        ia3_to_para(config, tensors, SHAPE, where="/adapters/x")


def test_pure_conversion_of_the_default():
    tensors = _tensors(DEFAULT_TENSORS)
    out = ia3_to_para(_config(), tensors, SHAPE, 2, "/adapters/x")
    assert out.config.targets == ("k", "v", "u") and out.config.base_model_name_or_path == "tiny"
    k = tensors[tensor_key("model.layers.1.self_attn.k_proj")].reshape(-1)
    down = tensors[tensor_key("model.layers.1.mlp.down_proj")].reshape(-1)
    assert torch.equal(out.weights.up_bias[1, :8], k)
    assert torch.equal(out.weights.up_bias[1, 16:], down)
    # bf16 / fp16 vectors are accepted and widened exactly
    half = {k_: v.to(torch.bfloat16) for k_, v in tensors.items()}
    assert torch.equal(ia3_to_para(_config(), half, SHAPE).weights.up_bias[0, :8],
                       half[tensor_key("model.layers.0.self_attn.k_proj")].float().reshape(-1))
    with pytest.raises(ValueError, match="num_layers=3"):
        ia3_to_para(_config(), tensors, SHAPE, 3)


def test_up_output_and_down_feedforward_multiply():
    cfg = _config(target_modules=["up_proj", "down_proj"], feedforward_modules=["down_proj"])
    tensors = _tensors({"up_proj": False, "down_proj": True})
    out = ia3_to_para(cfg, tensors, SHAPE)
    assert out.config.targets == ("u",)
    up = tensors[tensor_key("model.layers.0.mlp.up_proj")].reshape(-1)
    down = tensors[tensor_key("model.layers.0.mlp.down_proj")].reshape(-1)
    assert torch.equal(out.weights.up_bias[0], up * down)


def test_layers_to_transform_gives_ones_elsewhere():
    """A future PEFT's layers_to_transform (PEFT's own matching rule): untargeted layers get ones."""
    cfg = _config(target_modules=["k_proj", "v_proj"], feedforward_modules=[], layers_to_transform=[1])
    tensors = _tensors({"k_proj": False, "v_proj": False}, layers=(1,))
    out = ia3_to_para(cfg, tensors, SHAPE)
    assert torch.equal(out.weights.up_bias[0], torch.ones(16))
    assert torch.equal(out.weights.up_bias[1, :8], tensors[tensor_key("model.layers.1.self_attn.k_proj")].reshape(-1))
    _refused(cfg, _tensors({"k_proj": False, "v_proj": False}), r"unexpected tensor .*layers\.0\.self_attn\.k_proj")
    # exclude_modules as PEFT reads them: a list of names/suffixes, or a regex
    for exclude in (["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"], r".*layers\.0\..*"):
        cfg = _config(target_modules=["k_proj", "v_proj"], feedforward_modules=[], exclude_modules=exclude)
        assert torch.equal(ia3_to_para(cfg, tensors, SHAPE).weights.up_bias[0], torch.ones(16))


@pytest.mark.parametrize(
    "targets, feedforward, match",
    [
        (["k_proj", "o_proj"], [], r"module 'model\.layers\.0\.self_attn\.o_proj' \(o_proj, output scaling\) "
                                   r"scales the attention output projection's output"),
        (["o_proj"], ["o_proj"], r"'model\.layers\.0\.self_attn\.o_proj' \(o_proj, feed-forward: input scaling\)"),
        (["v_proj", "down_proj"], [], r"'model\.layers\.0\.mlp\.down_proj' \(down_proj, output scaling\) listed as "
                                      r"a non-feed-forward module"),
        (["up_proj"], ["up_proj"], r"'model\.layers\.0\.mlp\.up_proj' \(up_proj, feed-forward: input scaling\) "
                                   r"listed in feedforward_modules.*not expressible"),
        (["gate_proj", "down_proj"], ["gate_proj", "down_proj"],
         r"'model\.layers\.0\.mlp\.gate_proj' \(gate_proj, feed-forward.*not expressible"),
        (["k_proj"], ["k_proj"], r"'model\.layers\.0\.self_attn\.k_proj' \(k_proj, feed-forward.*not expressible"),
        (["v_proj", "lm_head"], [], r"module 'lm_head' \(lm_head, output scaling\) scales the logits"),
        (r".*", r".*down_proj", r"self_attn\.o_proj"),  # a regex matching every linear module
        ("all-linear", ["down_proj"], r"'all-linear' includes o_proj"),
        (["nothing"], [], r"match no module of this base model"),
        (r"model\.(", [], r"target_modules '.*' is not a valid regex \(missing \)"),
    ],
)
def test_refused_modules(targets, feedforward, match):
    _refused(_config(target_modules=targets, feedforward_modules=feedforward), _tensors(DEFAULT_TENSORS),
             r"/adapters/x/adapter_config\.json: .*" + match)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"peft_type": "LORA"}, r"peft_type is 'LORA', not 'IA3'.*--enable-lora"),
        ({"peft_type": None}, r"peft_type is None, not 'IA3'"),
        ({"fan_in_fan_out": True}, r"fan_in_fan_out is true"),
        ({"fan_in_fan_out": "false"}, r"invalid \(IA\)\^3 config: fan_in_fan_out: Input should be a valid boolean"),
        ({"modules_to_save": ["lm_head"]}, r"modules_to_save=\['lm_head'\]: the adapter replaces whole modules"),
        ({"target_modules": None}, r"target_modules is null"),
        ({"feedforward_modules": None}, r"feedforward_modules is null"),
        ({"target_modules": 5}, r"invalid \(IA\)\^3 config: target_modules"),
        ({"target_modules": ["k_proj", 3]}, r"invalid \(IA\)\^3 config: target_modules"),
        ({"layers_to_transform": "1"}, r"invalid \(IA\)\^3 config: layers_to_transform"),
        ({"task_type": "SEQ_CLS"}, r"task_type 'SEQ_CLS': vllm-para serves causal-LM adapters"),
    ],
)
def test_refused_configs(fields, match):
    _refused(_config(**fields), _tensors(DEFAULT_TENSORS), r"/adapters/x/adapter_config\.json: " + match)


def _mutate(name, fn):
    tensors = _tensors(DEFAULT_TENSORS)
    key = tensor_key(name)
    tensors[key] = fn(tensors[key])
    return tensors


KV = "model.layers.1.self_attn.v_proj"
W = r"/adapters/x/adapter_model\.safetensors: .*"


@pytest.mark.parametrize(
    "tensors, match",
    [
        ({k: v for k, v in _tensors(DEFAULT_TENSORS).items() if "layers.1.mlp" not in k},
         r"missing tensor 'base_model\.model\.model\.layers\.1\.mlp\.down_proj\.ia3_l'; adapter_config\.json "
         r"targets module 'model\.layers\.1\.mlp\.down_proj'"),
        ({**_tensors(DEFAULT_TENSORS), tensor_key("model.layers.0.self_attn.q_proj"): torch.ones(16, 1)},
         r"unexpected tensor 'base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.ia3_l'"),
        ({**_tensors(DEFAULT_TENSORS), tensor_key("model.layers.2.self_attn.k_proj"): torch.ones(8, 1)},
         r"unexpected tensor .*layers\.2\.self_attn\.k_proj"),
        (_mutate(KV, lambda t: t.reshape(-1)), r"tensor '.*layers\.1\.self_attn\.v_proj\.ia3_l' has shape \[8\], "
                                               r"expected \[8, 1\] \(output scaling of v_proj"),
        (_mutate(KV, lambda t: t.reshape(1, -1)), r"has shape \[1, 8\], expected \[8, 1\]"),
        (_mutate("model.layers.0.mlp.down_proj", lambda t: t.reshape(-1, 1)),
         r"down_proj\.ia3_l' has shape \[32, 1\], expected \[1, 32\] \(input scaling of down_proj"),
        (_mutate(KV, lambda t: torch.ones(9, 1)), r"has shape \[9, 1\], expected \[8, 1\]"),
        (_mutate(KV, lambda t: t.double()), r"v_proj\.ia3_l' has dtype torch\.float64, expected one of"),
        (_mutate(KV, lambda t: t.to(torch.int32)), r"has dtype torch\.int32"),
        (_mutate(KV, lambda t: torch.where(torch.arange(8).reshape(8, 1) == 3, float("nan"), t)),
         r"v_proj\.ia3_l' contains NaN or Inf"),
        (_mutate(KV, lambda t: t * float("inf")), r"contains NaN or Inf"),
    ],
)
def test_refused_tensors(tensors, match):
    _refused(_config(), tensors, W + match)


# ----------------------------------------------------------------- files
def _write(directory, config=None, tensors=None):
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / IA3_CONFIG).write_text(json.dumps(_config() if config is None else config))
    if tensors is not False:
        save_file(_tensors(DEFAULT_TENSORS) if tensors is None else tensors,
                  str(directory / "adapter_model.safetensors"))
    return directory


def test_files(tmp_path):
    good = _write(tmp_path / "good")
    loaded = load_ia3_adapter(good, SHAPE)
    assert loaded.config.targets == ("k", "v", "u")
    # the same from the bytes alone (what a worker gets from the API server)
    from_bytes = parse_ia3_bytes((good / IA3_CONFIG).read_bytes(), (good / "adapter_model.safetensors").read_bytes(),
                                 SHAPE, where=str(good))
    assert from_bytes.config == loaded.config and torch.equal(from_bytes.weights.up_bias, loaded.weights.up_bias)
    assert is_ia3_dir(good) and adapter_kind(good) == "ia3"

    def refused(directory, match):
        with pytest.raises(PARAAdapterError, match=match):
            load_ia3_adapter(directory, SHAPE)

    refused(tmp_path / "absent", r"absent: not a directory")
    pickles = _write(tmp_path / "pickles", tensors=False)
    torch.save({"x": torch.ones(1)}, pickles / "adapter_model.bin")
    refused(pickles,
            r"adapter_model\.safetensors: missing\. Found \['adapter_model\.bin'\]: pickle files are never loaded")
    no_config = tmp_path / "no_config"
    shutil.copytree(good, no_config)
    (no_config / IA3_CONFIG).unlink()
    refused(no_config, r"adapter_config\.json: missing\. A PEFT \(IA\)\^3 adapter directory holds")
    bad_json = _write(tmp_path / "bad_json")
    (bad_json / IA3_CONFIG).write_text("{peft_type: IA3")
    refused(bad_json, r"adapter_config\.json: not valid JSON")
    (bad_json / IA3_CONFIG).write_text("[1, 2]")
    refused(bad_json, r"adapter_config\.json: must be a JSON object")
    assert not is_ia3_dir(bad_json)
    truncated = _write(tmp_path / "truncated")
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    refused(truncated, r"adapter_model\.safetensors: not a valid safetensors file")
    # a bad config is refused before the weights are parsed
    (truncated / IA3_CONFIG).write_text(json.dumps(_config(target_modules=["o_proj"])))
    refused(truncated, r"o_proj")
    outside = tmp_path / "outside.safetensors"
    shutil.copy(good / "adapter_model.safetensors", outside)
    link = _write(tmp_path / "link", tensors=False)
    os.symlink(outside, link / "adapter_model.safetensors")
    refused(link, r"is a symlink to .*outside the adapter directory")
    big = _write(tmp_path / "big")
    (big / IA3_CONFIG).write_text(json.dumps(_config(padding="x" * 70_000)))
    refused(big, r"adapter_config\.json: too large")


def test_kind_detection(tmp_path, llama):
    from testkit.tiny_models import build_random_adapter

    para = build_random_adapter(llama, tmp_path / "para")
    assert adapter_kind(para) == "para" and not is_ia3_dir(para)
    assert adapter_kind(tmp_path / "nothing_here") == "para"  # the PARA loader reports what is missing
    lora = _write(tmp_path / "lora", config={"peft_type": "LORA", "r": 8})
    assert not is_ia3_dir(lora)
    with pytest.raises(PARAAdapterError, match=r"peft_type 'LORA': vllm-para serves PARA and PEFT \(IA\)\^3"):
        adapter_kind(lora)
    both = _write(tmp_path / "both")
    shutil.copy(para / "para_config.json", both / "para_config.json")
    with pytest.raises(PARAAdapterError, match=r"holds both para_config\.json \(PARA\) and adapter_config\.json"):
        adapter_kind(both)


def test_module_names_are_peft_names(llama):
    """The loader's list of linear modules is the tiny model's, as PEFT names them."""
    model = _base(llama)
    linear = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    assert sorted(module_names(model.config.num_hidden_layers)) == linear
