"""The PARA math, in one place: pooling, the vector generator (VG), the split of
its output into per-projection vectors, and the elementwise scaling.

Pure torch, no vLLM import. The transformers reference, the trainer and the vLLM
models all call these functions, so "PARA" means the same thing everywhere.

Method (per decoder layer, `h` = residual stream entering the layer):
    p = pool(h over the prompt)                      # last token or mean
    l = gelu(p @ W_down.T) @ W_up.T + b_up           # float32, exact erf GeLU
    l_q, l_k, l_v, l_g, l_u = split(l, targets)      # fixed order q,k,v,g,u
    Q' = l_q * (x W_q), V' = l_v * (x W_v), U' = l_u * (x W_up), ...

Runs in: workers (the VG op), the transformers reference and the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import TARGET_ORDER, ModelShape, PARAConfig

DOWN = "vg.down.weight"
UP = "vg.up.weight"
UP_BIAS = "vg.up.bias"


def tensor_name(layer: int, part: str) -> str:
    """Name of one VG tensor in `adapter_model.safetensors`."""
    return f"layers.{layer}.{part}"


# --------------------------------------------------------------------- pooling
def pool_last(hidden: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
    """Rows of `hidden` ([tokens, H]) at `last_index` ([B]); float32 [B, H]."""
    return hidden.index_select(0, last_index).float()


def pool_mean(hidden: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Mean of `hidden[start:end]` ([tokens, H]) in float32; [H]."""
    return hidden[start:end].float().mean(dim=0)


def pool_mean_skip_first(hidden: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Mean of `hidden[start + 1:end]` in float32 (the first token left out); a
    one-token prompt pools that token. [H]."""
    return pool_mean(hidden, start + 1 if end - start > 1 else start, end)


def pool_prompts(
    hidden: torch.Tensor, starts: list[int], ends: list[int], mode: str
) -> torch.Tensor:
    """Pool each prompt `hidden[starts[i]:ends[i]]` of a flat [tokens, H] tensor.

    Returns float32 [len(starts), H]. `ends` are exclusive: the prompt's final
    token is `ends[i] - 1`.
    """
    if mode == "last":
        idx = torch.tensor([e - 1 for e in ends], device=hidden.device, dtype=torch.long)
        return pool_last(hidden, idx)
    if mode == "mean":
        return torch.stack([pool_mean(hidden, s, e) for s, e in zip(starts, ends)])
    if mode == "mean_skip_first":
        return torch.stack([pool_mean_skip_first(hidden, s, e) for s, e in zip(starts, ends)])
    raise ValueError(f"unknown pooling {mode!r}; expected 'last', 'mean' or 'mean_skip_first'")


# ------------------------------------------------------------------------- VG
_MINUS_INV_SQRT2 = -0.7071067811865476


def gelu_exact(x: torch.Tensor) -> torch.Tensor:
    """The exact (erf) GeLU, `x * Phi(x) = x/2 * erfc(-x/sqrt(2))`, as three elementwise ops.

    Equal to `F.gelu(x)` within float32 rounding (erfc, not 1 + erf: no cancellation for
    negative x), differentiable. Not `F.gelu` itself: on CPU its erf kernel enters an OpenMP
    parallel region even for the VG's [B, 12] tensor, which cost ~100 us per layer per prefill
    inside a vLLM worker (and milliseconds when the cores are shared); these ops stay serial."""
    return x * torch.erfc(x * _MINUS_INV_SQRT2) * 0.5


def vg_forward(
    pooled: torch.Tensor,
    down: torch.Tensor,
    up: torch.Tensor,
    up_bias: torch.Tensor,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`l = gelu(p @ down.T) @ up.T + up_bias`, computed in float32.

    pooled [B, H]; down [r, H]; up [T, r]; up_bias [T] -> [B, T] in `out_dtype`
    (default: float32). Differentiable, so the trainer uses it as is.
    """
    z = gelu_exact(pooled.float() @ down.float().t())
    out = torch.addmm(up_bias.float(), z, up.float().t())
    return out if out_dtype is None else out.to(out_dtype)


def split_vectors(vectors: torch.Tensor, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Split VG output [..., T] into {target: [..., size]} in TARGET_ORDER."""
    ordered = [t for t in TARGET_ORDER if t in sizes]
    parts = torch.split(vectors, [sizes[t] for t in ordered], dim=-1)
    return dict(zip(ordered, parts))


def scale(projection_output: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """Apply a PARA vector: elementwise product with a projection output."""
    return projection_output * vector


# --------------------------------------------------------------- parameters
@dataclass
class VGWeights:
    """One adapter's VG weights, stacked over layers."""

    down: torch.Tensor  # [L, r, H]
    up: torch.Tensor  # [L, T, r]
    up_bias: torch.Tensor  # [L, T]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.down[i], self.up[i], self.up_bias[i]

    def to(self, device=None, dtype=None) -> "VGWeights":
        return VGWeights(*(t.to(device=device, dtype=dtype) for t in (self.down, self.up, self.up_bias)))


def init_vg_weights(
    config: PARAConfig, generator: torch.Generator | None = None, down_std: float = 0.02
) -> VGWeights:
    """Fresh VG: small random W_down, W_up = 0, b_up = 1 (so outputs equal the base model)."""
    L, r, H, T = config.num_hidden_layers, config.r, config.hidden_size, config.vector_size
    down = torch.randn(L, r, H, generator=generator) * down_std
    return VGWeights(down=down, up=torch.zeros(L, T, r), up_bias=torch.ones(L, T))


def param_count(config: PARAConfig) -> int:
    """Trainable parameters of a PARA adapter: L * (r*H + T*r + T)."""
    r, H, T = config.r, config.hidden_size, config.vector_size
    return config.num_hidden_layers * (r * H + T * r + T)


def full_layout_sizes(shape: ModelShape) -> dict[str, int]:
    """Sizes of all five targets: the layout every vLLM vector buffer uses."""
    return {t: shape.target_size(t) for t in TARGET_ORDER}


def expand_to_all_targets(weights: VGWeights, config: PARAConfig) -> VGWeights:
    """Rewrite an adapter's VG so it emits all five targets (q,k,v,g,u).

    Targets the adapter does not have get W_up rows = 0 and b_up = 1, i.e. an
    exact vector of ones. This lets adapters with different targets share one
    stacked layout (and one batched VG) in the serving engine.
    """
    L, r = config.num_hidden_layers, config.r
    ups, biases = [], []
    own = split_vectors(weights.up.transpose(1, 2), config.split_sizes())  # {t: [L, r, size]}
    own_bias = split_vectors(weights.up_bias, config.split_sizes())
    for t, size in full_layout_sizes(config.shape).items():
        if t in own:
            ups.append(own[t].transpose(1, 2))
            biases.append(own_bias[t])
        else:
            ups.append(weights.up.new_zeros(L, size, r))
            biases.append(weights.up_bias.new_ones(L, size))
    return VGWeights(down=weights.down, up=torch.cat(ups, dim=1), up_bias=torch.cat(biases, dim=1))
