"""The layer wrappers and per-pipeline-rank sizing, on small stand-in modules
(no vLLM engine): what is wrapped, what stream the VG sees, which slice scales
which projection, and that each pipeline rank holds only its own layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vllm_para.worker.layers import (
    ResidualTap, ScaledProjection, WRAPPED, local_layers, missing_modules, wrap_layers,
)
from vllm_para.worker.vector_pages import VectorPages


class Norm(nn.Module):
    """vLLM-style norm: `norm(x)` or `norm(x, residual) -> (normed, x + residual)`."""

    def forward(self, x, residual=None):
        if residual is None:
            return x * 2
        s = x + residual
        return s * 2, s


class Proj(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.width = width

    def forward(self, x):
        return torch.ones(x.shape[0], self.width) * 3, None


class Layer(nn.Module):
    def __init__(self, qkv, gu):
        super().__init__()
        self.input_layernorm = Norm()
        self.self_attn = nn.Module()
        self.self_attn.qkv_proj = Proj(qkv)
        self.mlp = nn.Module()
        self.mlp.gate_up_proj = Proj(gu)


def fake_model(num_layers=3, start=0, end=None, qkv=6, gu=4):
    model = nn.Module()
    model.model = nn.Module()
    model.model.layers = nn.ModuleList([Layer(qkv, gu) for _ in range(num_layers)])
    model.model.start_layer, model.model.end_layer = start, end if end is not None else num_layers
    return model


def pages_for(num_layers, width=10, num_pages=4, tokens=8):
    return VectorPages(num_layers, num_pages, width, tokens, torch.float32, "cpu")


def test_wraps_exactly_three_modules_per_local_layer_and_keeps_layer_classes():
    model = fake_model(4, start=1, end=3)
    pages = pages_for(2)
    assert wrap_layers(model, pages, qkv_width=6, width=10) == 2
    for idx, layer in enumerate(model.model.layers):
        assert type(layer) is Layer
        wrapped = isinstance(layer.input_layernorm, ResidualTap)
        assert wrapped == (1 <= idx < 3)
        if wrapped:
            assert layer.input_layernorm.para_layer == idx - 1  # local index into this rank's buffer
            assert isinstance(layer.self_attn.qkv_proj, ScaledProjection)
            assert (layer.self_attn.qkv_proj.para_start, layer.self_attn.qkv_proj.para_end) == (0, 6)
            assert (layer.mlp.gate_up_proj.para_start, layer.mlp.gate_up_proj.para_end) == (6, 10)
    wrap_layers(model, pages, 6, 10)  # idempotent
    assert isinstance(model.model.layers[1].input_layernorm.base_layer, Norm)
    assert WRAPPED == ("input_layernorm", "self_attn.qkv_proj", "mlp.gate_up_proj")


def test_projection_scaled_by_its_slice_of_the_tokens_page():
    model = fake_model(1)
    pages = pages_for(1)
    wrap_layers(model, pages, 6, 10)
    pages.vectors[0, 2] = torch.arange(10, dtype=torch.float32)
    pages.token_pages[:3] = torch.tensor([0, 2, 0])
    layer = model.model.layers[0]
    qkv, bias = layer.self_attn.qkv_proj(torch.zeros(3, 5))
    assert bias is None
    assert torch.equal(qkv[0], torch.full((6,), 3.0)) and torch.equal(qkv[2], torch.full((6,), 3.0))  # unit page
    assert torch.equal(qkv[1], 3 * torch.arange(6, dtype=torch.float32))
    gu, _ = layer.mlp.gate_up_proj(torch.zeros(3, 5))
    assert torch.equal(gu[1], 3 * torch.arange(6, 10, dtype=torch.float32))


def test_residual_tap_passes_the_stream_entering_the_layer(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.ops.vllm_para, "compute_vectors",
                        lambda stream, vectors, layer, key: seen.append((stream.clone(), layer)), raising=False)
    model = fake_model(2)
    pages = pages_for(2)
    wrap_layers(model, pages, 6, 10)
    pages.plan = True  # a step with VG rows
    x, r = torch.ones(2, 3), torch.full((2, 3), 5.0)
    out = model.model.layers[0].input_layernorm(x)  # first layer: the input is the stream
    assert torch.equal(out, x * 2) and torch.equal(seen[-1][0], x) and seen[-1][1] == 0
    normed, resid = model.model.layers[1].input_layernorm(x, r)  # later layers: the fused residual sum
    assert torch.equal(resid, x + r) and torch.equal(normed, (x + r) * 2)
    assert torch.equal(seen[-1][0], x + r) and seen[-1][1] == 1


def test_eager_step_without_vg_rows_skips_the_op_but_a_compiled_graph_always_holds_it(monkeypatch):
    """Every decode step has no VG rows: run eagerly it makes no op call (30 per step on a real
    base); a graph is traced once, so it must hold the call whatever the step it was traced in."""
    from vllm_para.worker import ops

    model = fake_model(1)
    pages = pages_for(1)
    wrap_layers(model, pages, 6, 10)
    tap = model.model.layers[0].input_layernorm
    calls = []
    real = torch.ops.vllm_para.compute_vectors
    monkeypatch.setattr(torch.ops.vllm_para, "compute_vectors", lambda *a: calls.append(a[2]), raising=False)
    x = torch.ones(2, 3)
    pages.plan = None
    tap(x)
    assert calls == []
    pages.plan = True
    tap(x)
    assert calls == [0]

    monkeypatch.setattr(torch.ops.vllm_para, "compute_vectors", real, raising=False)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    pages.plan = None  # traced in a decode step
    torch._dynamo.reset()
    torch.compile(tap, backend=backend, fullgraph=True)(x)
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert any("vllm_para.compute_vectors" in t for t in targets), targets
    assert ops.OP_NAME == "vllm_para::compute_vectors"


def test_missing_modules_named():
    model = fake_model(2)
    del model.model.layers[1].mlp.gate_up_proj
    assert missing_modules(model) == ["layers.1.mlp.gate_up_proj"]
    with pytest.raises(TypeError, match="missing"):
        wrap_layers(model, pages_for(2), 6, 10)
    with pytest.raises(TypeError, match="model.layers"):
        local_layers(nn.Linear(2, 2))


def test_pipeline_rank_holds_only_its_layers_weights():
    """Host weights and slots of a pipeline rank cover its own layers only."""
    from vllm_para.config import PARAConfig
    from vllm_para.core import init_vg_weights
    from vllm_para.worker.runtime import host_weights_preparer
    from vllm_para.worker.tp_layout import RankLayout

    config = PARAConfig(base_model_name_or_path="x", num_hidden_layers=4, hidden_size=8, q_size=8, kv_size=4,
                        intermediate_size=16, r=2, targets=("q", "v", "u"))
    weights = init_vg_weights(config, torch.Generator().manual_seed(0))
    layout = RankLayout.build(config.shape, head_dim=4, tp_rank=0, tp_size=1)
    full = host_weights_preparer(layout, (0, 4), pin=False)(weights, config)
    second_half = host_weights_preparer(layout, (2, 4), pin=False)(weights, config)
    assert full.down.shape[0] == 4 and second_half.down.shape[0] == 2
    assert torch.equal(second_half.down, full.down[2:4]) and torch.equal(second_half.up, full.up[2:4])
    assert torch.equal(second_half.up_bias, full.up_bias[2:4])
