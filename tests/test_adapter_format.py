"""The on-disk adapter format: exact round trip and every malformed case refused
with a message naming the file and the tensor."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from vllm_para import core
from vllm_para.adapter import PARAAdapter, PARAAdapterError, load_adapter
from vllm_para.config import CONFIG_FILE, WEIGHTS_FILE, ModelShape, PARAConfig, PARAConfigError

SHAPE = dict(num_hidden_layers=2, hidden_size=8, q_size=6, kv_size=4, intermediate_size=10)


def make_adapter(**kw) -> PARAAdapter:
    cfg = PARAConfig(base_model_name_or_path="tiny", r=3, **{**SHAPE, **kw})
    g = torch.Generator().manual_seed(0)
    w = core.init_vg_weights(cfg, generator=g)
    w.up = torch.randn(w.up.shape, generator=g)
    w.up_bias = torch.randn(w.up_bias.shape, generator=g)
    return PARAAdapter(cfg, w)


@pytest.fixture
def saved(tmp_path):
    adapter = make_adapter()
    d = tmp_path / "adapter"
    adapter.save(d)
    return adapter, d


def rewrite_tensors(d, edit):
    path = d / WEIGHTS_FILE
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_round_trip_exact(saved):
    adapter, d = saved
    assert (d / CONFIG_FILE).is_file() and (d / WEIGHTS_FILE).is_file()
    loaded = load_adapter(d)
    assert loaded.config == adapter.config
    for name in ("down", "up", "up_bias"):
        assert torch.equal(getattr(loaded.weights, name), getattr(adapter.weights, name)), name
    assert set(load_file(str(d / WEIGHTS_FILE))) == set(adapter.expected_shapes())
    again = load_adapter(d, base_shape=ModelShape(**SHAPE))
    assert torch.equal(again.weights.up, adapter.weights.up)


def test_round_trip_bf16_load(saved):
    adapter, d = saved
    loaded = load_adapter(d, dtype=torch.bfloat16)
    assert loaded.weights.up.dtype == torch.bfloat16
    assert torch.equal(loaded.weights.up, adapter.weights.up.bfloat16())


def test_missing_dir(tmp_path):
    with pytest.raises(PARAAdapterError, match="not a directory") as e:
        load_adapter(tmp_path / "nope")
    assert "nope" in str(e.value)


def test_missing_config(saved):
    _, d = saved
    (d / CONFIG_FILE).unlink()
    with pytest.raises(PARAConfigError) as e:
        load_adapter(d)
    assert CONFIG_FILE in str(e.value) and "missing" in str(e.value)


def test_missing_weights_with_pickle(saved):
    _, d = saved
    (d / WEIGHTS_FILE).unlink()
    (d / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(PARAAdapterError) as e:
        load_adapter(d)
    msg = str(e.value)
    assert WEIGHTS_FILE in msg and "missing" in msg
    assert "adapter_model.bin" in msg and "pickle" in msg


def test_missing_weights(saved):
    _, d = saved
    (d / WEIGHTS_FILE).unlink()
    with pytest.raises(PARAAdapterError, match="missing") as e:
        load_adapter(d)
    assert WEIGHTS_FILE in str(e.value) and "pickle" not in str(e.value)


def test_missing_tensor(saved):
    _, d = saved
    rewrite_tensors(d, lambda t: t.pop("layers.1.vg.up.bias"))
    with pytest.raises(PARAAdapterError) as e:
        load_adapter(d)
    assert WEIGHTS_FILE in str(e.value) and "missing tensor 'layers.1.vg.up.bias'" in str(e.value)


def test_extra_tensor(saved):
    _, d = saved
    rewrite_tensors(d, lambda t: t.__setitem__("layers.2.vg.down.weight", torch.zeros(3, 8)))
    with pytest.raises(PARAAdapterError) as e:
        load_adapter(d)
    assert WEIGHTS_FILE in str(e.value) and "unexpected tensor 'layers.2.vg.down.weight'" in str(e.value)


def test_wrong_shape(saved):
    _, d = saved
    rewrite_tensors(d, lambda t: t.__setitem__("layers.0.vg.up.weight", torch.zeros(5, 3)))
    with pytest.raises(PARAAdapterError) as e:
        load_adapter(d)
    msg = str(e.value)
    assert WEIGHTS_FILE in msg and "'layers.0.vg.up.weight'" in msg and "shape [5, 3]" in msg and "[20, 3]" in msg


def test_wrong_dtype(saved):
    _, d = saved
    rewrite_tensors(d, lambda t: t.__setitem__("layers.1.vg.down.weight", torch.zeros(3, 8, dtype=torch.int32)))
    with pytest.raises(PARAAdapterError) as e:
        load_adapter(d)
    msg = str(e.value)
    assert WEIGHTS_FILE in msg and "'layers.1.vg.down.weight'" in msg and "dtype" in msg and "int32" in msg


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite(saved, bad):
    _, d = saved

    def edit(t):
        t["layers.0.vg.up.bias"][3] = bad

    rewrite_tensors(d, edit)
    with pytest.raises(PARAAdapterError) as e:
        load_adapter(d)
    msg = str(e.value)
    assert WEIGHTS_FILE in msg and "'layers.0.vg.up.bias'" in msg and "NaN or Inf" in msg


def test_other_base_model(tmp_path, tiny_llama):
    from transformers import AutoConfig

    base = ModelShape.from_hf_config(AutoConfig.from_pretrained(str(tiny_llama)))
    assert base.hidden_size == 128
    d = make_adapter().save(tmp_path / "a")  # hidden_size=8
    with pytest.raises(PARAConfigError) as e:
        load_adapter(d, base_shape=base)
    msg = str(e.value)
    assert CONFIG_FILE in msg and "hidden_size=8 (base model has 128)" in msg and "'tiny'" in msg
    load_adapter(d)  # without a base shape, it loads


def test_unknown_config_field(saved):
    _, d = saved
    raw = json.loads((d / CONFIG_FILE).read_text())
    raw["lora_alpha"] = 16
    (d / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(PARAConfigError) as e:
        load_adapter(d)
    assert CONFIG_FILE in str(e.value) and "lora_alpha" in str(e.value)


def test_bad_config_values(saved):
    _, d = saved
    raw = json.loads((d / CONFIG_FILE).read_text())
    raw["targets"] = ["q", "q"]
    (d / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(PARAConfigError) as e:
        load_adapter(d)
    assert CONFIG_FILE in str(e.value) and "targets" in str(e.value) and "duplicates" in str(e.value)


def test_invalid_json(saved):
    _, d = saved
    (d / CONFIG_FILE).write_text('{"r": 12,')
    with pytest.raises(PARAConfigError) as e:
        load_adapter(d)
    assert CONFIG_FILE in str(e.value) and "not valid JSON" in str(e.value)


@pytest.mark.parametrize("payload", [b"this is not a safetensors file at all", b"", b"\x80\x04\x95pickle"])
def test_not_safetensors(saved, payload):
    _, d = saved
    (d / WEIGHTS_FILE).write_bytes(payload)
    with pytest.raises(PARAAdapterError) as e:
        load_adapter(d)
    assert WEIGHTS_FILE in str(e.value) and "not a valid safetensors file" in str(e.value)
