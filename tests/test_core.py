"""The PARA math in core.py and the config contract."""

from __future__ import annotations

import math

import pytest
import torch

from vllm_para import core
from vllm_para.config import TARGET_ORDER, ModelShape, PARAConfig, PARAConfigError

SHAPE = dict(num_hidden_layers=3, hidden_size=8, q_size=6, kv_size=4, intermediate_size=10)


def make_config(**kw) -> PARAConfig:
    return PARAConfig(base_model_name_or_path="tiny", **{**SHAPE, **kw})


def gelu_erf(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_vg_forward_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    B, H, r, T = 2, 5, 3, 4
    p = torch.randn(B, H, generator=g, dtype=torch.float64)
    down = torch.randn(r, H, generator=g, dtype=torch.float64)
    up = torch.randn(T, r, generator=g, dtype=torch.float64)
    bias = torch.randn(T, generator=g, dtype=torch.float64)
    expected = torch.empty(B, T, dtype=torch.float64)
    for b in range(B):
        z = [gelu_erf(sum(p[b, h].item() * down[i, h].item() for h in range(H))) for i in range(r)]
        for t in range(T):
            expected[b, t] = bias[t].item() + sum(up[t, i].item() * z[i] for i in range(r))
    out = core.vg_forward(p.float(), down.float(), up.float(), bias.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    # GeLU is the exact erf one, not tanh: a large pre-activation where they differ
    x = torch.tensor([[1.5]])
    one = torch.ones(1, 1)
    l = core.vg_forward(x, one, one, torch.zeros(1))
    assert l.item() == pytest.approx(gelu_erf(1.5), abs=1e-7)
    # output dtype cast
    assert core.vg_forward(p.float(), down.float(), up.float(), bias.float(),
                           out_dtype=torch.bfloat16).dtype == torch.bfloat16


def test_gelu_exact_is_torch_exact_gelu_with_its_gradient():
    x = torch.linspace(-12, 12, 4801, dtype=torch.float64)
    torch.testing.assert_close(core.gelu_exact(x), torch.nn.functional.gelu(x), rtol=1e-12, atol=1e-15)
    x32 = x.float().requires_grad_()
    core.gelu_exact(x32).sum().backward()
    ref = x.clone().requires_grad_()
    torch.nn.functional.gelu(ref).sum().backward()
    assert (core.gelu_exact(x.float()).double() - torch.nn.functional.gelu(x)).abs().max() < 2e-6
    assert (x32.grad.double() - ref.grad).abs().max() < 1e-6
    assert core.gelu_exact(torch.tensor([-30.0])).item() == 0.0  # no NaN, no cancellation far left


def test_vg_forward_is_float32_for_low_precision_inputs():
    p = torch.randn(2, 4).bfloat16()
    out = core.vg_forward(p, torch.randn(3, 4).bfloat16(), torch.randn(5, 3).bfloat16(), torch.randn(5).bfloat16())
    assert out.dtype == torch.float32


def test_split_vectors_order():
    cfg = make_config(targets=("u", "q", "g", "v", "k"))
    sizes = cfg.split_sizes()
    assert list(sizes) == ["q", "k", "v", "g", "u"]
    assert sizes == {"q": 6, "k": 4, "v": 4, "g": 10, "u": 10}
    l = torch.arange(cfg.vector_size, dtype=torch.float32).unsqueeze(0)
    parts = core.split_vectors(l, sizes)
    assert list(parts) == list(TARGET_ORDER)
    assert torch.equal(parts["q"], torch.arange(0, 6.0).unsqueeze(0))
    assert torch.equal(parts["k"], torch.arange(6, 10.0).unsqueeze(0))
    assert torch.equal(parts["v"], torch.arange(10, 14.0).unsqueeze(0))
    assert torch.equal(parts["g"], torch.arange(14, 24.0).unsqueeze(0))
    assert torch.equal(parts["u"], torch.arange(24, 34.0).unsqueeze(0))
    # a subset keeps the fixed order too, whatever order the dict was built in
    parts = core.split_vectors(torch.arange(14.0), {"v": 4, "q": 10})
    assert list(parts) == ["q", "v"]
    assert torch.equal(parts["q"], torch.arange(10.0))


def test_param_count():
    cfg = make_config(r=4, targets=("q", "v", "u"))
    L, r, H, T = 3, 4, 8, 6 + 4 + 10
    assert cfg.vector_size == T
    assert core.param_count(cfg) == L * (r * H + T * r + T)
    w = core.init_vg_weights(cfg)
    assert core.param_count(cfg) == w.down.numel() + w.up.numel() + w.up_bias.numel()


def test_init_gives_exact_ones():
    cfg = make_config(r=4, targets=("q", "k", "v", "g", "u"))
    w = core.init_vg_weights(cfg, generator=torch.Generator().manual_seed(1))
    assert (w.down.shape == (3, 4, 8) and w.up.shape == (3, cfg.vector_size, 4)
            and w.up_bias.shape == (3, cfg.vector_size))
    assert w.down.abs().sum() > 0
    p = torch.randn(5, 8) * 100
    for i in range(3):
        l = core.vg_forward(p, *w.layer(i))
        assert torch.equal(l, torch.ones(5, cfg.vector_size))


def test_expand_to_all_targets():
    cfg = make_config(r=3, targets=("k", "u"))
    g = torch.Generator().manual_seed(2)
    w = core.init_vg_weights(cfg, generator=g)
    w.up = torch.randn(w.up.shape, generator=g)
    w.up_bias = torch.randn(w.up_bias.shape, generator=g)
    full = core.expand_to_all_targets(w, cfg)
    full_sizes = core.full_layout_sizes(cfg.shape)
    assert full.up.shape == (3, sum(full_sizes.values()), 3)
    p = torch.randn(4, 8, generator=g)
    for i in range(3):
        own = core.split_vectors(core.vg_forward(p, *w.layer(i)), cfg.split_sizes())
        every = core.split_vectors(core.vg_forward(p, *full.layer(i)), full_sizes)
        for t in TARGET_ORDER:
            if t in own:
                assert torch.equal(every[t], own[t]), t
            else:
                assert torch.equal(every[t], torch.ones_like(every[t])), t


def test_pool_functions():
    h = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 10.0]])
    assert torch.equal(core.pool_last(h, torch.tensor([1, 4])), torch.tensor([[3.0, 4.0], [9.0, 10.0]]))
    assert torch.equal(core.pool_mean(h, 1, 3), torch.tensor([4.0, 5.0]))
    assert torch.equal(core.pool_prompts(h, [0, 2], [2, 5], "last"), torch.tensor([[3.0, 4.0], [9.0, 10.0]]))
    assert torch.equal(core.pool_prompts(h, [0, 2], [2, 5], "mean"), torch.tensor([[2.0, 3.0], [7.0, 8.0]]))
    assert core.pool_prompts(h.bfloat16(), [0], [2], "mean").dtype == torch.float32
    # mean_skip_first leaves out each prompt's first (sink) token; a one-token prompt pools that token
    assert torch.equal(core.pool_prompts(h, [0, 2], [3, 5], "mean_skip_first"), torch.tensor([[4.0, 5.0], [8.0, 9.0]]))
    assert torch.equal(core.pool_prompts(h, [3], [4], "mean_skip_first"), torch.tensor([[7.0, 8.0]]))
    assert core.pool_prompts(h.bfloat16(), [0], [2], "last").dtype == torch.float32
    with pytest.raises(ValueError, match="unknown pooling"):
        core.pool_prompts(h, [0], [1], "max")


def test_config_validation():
    cfg = make_config(targets=("v", "q"))
    assert cfg.targets == ("q", "v")  # canonical order
    assert make_config().targets == ("q", "v", "u")
    assert cfg.shape == ModelShape(**SHAPE)
    with pytest.raises(ValueError, match="unexpected_field|[Ee]xtra"):
        make_config(unexpected_field=1)
    with pytest.raises(ValueError, match="duplicates"):
        make_config(targets=("q", "q"))
    with pytest.raises(ValueError, match="at least one"):
        make_config(targets=())
    with pytest.raises(ValueError):
        make_config(targets=("x",))
    with pytest.raises(ValueError):
        make_config(pooling="max")
    with pytest.raises(ValueError):
        make_config(r=0)


def test_check_matches():
    cfg = make_config()
    cfg.check_matches(ModelShape(**SHAPE))
    with pytest.raises(PARAConfigError, match="hidden_size=8 \\(base model has 16\\)"):
        cfg.check_matches(ModelShape(**{**SHAPE, "hidden_size": 16}))
