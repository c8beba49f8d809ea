"""PARA joins a vLLM decoder the way vLLM's LoRA does: it wraps modules.

vLLM builds its own model class, loads its weights and processes them as
always; then, per local decoder layer, three modules are replaced by wrappers
that call the original (vLLM's forward, tensor-parallel layer, quantization
method) and add PARA around it:

- `input_layernorm` -> `ResidualTap`: the stream entering the layer is the
  norm's input (first layer: `residual is None`) or the residual its fused add
  returns; the VG op runs on it for this step's prompts and writes their
  vectors into the side buffer. A compiled graph always holds the call (it is
  traced once, so it cannot depend on the step); run eagerly (`enforce_eager`,
  or any forward outside a graph), a step with no VG rows (every decode step)
  skips the call, and with it the dispatcher's fixed cost per layer;
- `self_attn.qkv_proj` -> `ScaledProjection`: output (bias included) times the
  token's `[l_q | l_k | l_v]` (this rank's slice), before any q/k norm or rotary;
- `mlp.gate_up_proj` -> `ScaledProjection`: output times `[l_g | l_u]`, before
  the activation.

Decoder layers keep their class and forward, so every family feature (soft-
capping, sliding windows, extra norms, q/k norms, rope scaling) stays vLLM's.
A family qualifies when its layers have these three modules with this meaning.

Runs in: every worker process.
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_para.core import scale
from vllm_para.worker.ops import SIDE_BUFFER_KEY  # (importing ops registers torch.ops.vllm_para.compute_vectors)

WRAPPED = ("input_layernorm", "self_attn.qkv_proj", "mlp.gate_up_proj")


class ResidualTap(nn.Module):
    """A decoder layer's input norm, plus: run the VG on the stream entering the layer."""

    def __init__(self, base_layer: nn.Module, pages: nn.Module, layer: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.para_pages = pages
        self.para_layer = layer  # index into this rank's side buffer

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, *args, **kwargs):
        if residual is None:
            out = self.base_layer(x, *args, **kwargs)
            stream = x
        else:
            out = self.base_layer(x, residual, *args, **kwargs)
            stream = out[1]  # x + residual: what the layer's residual branch carries
        if torch.compiler.is_compiling() or self.para_pages.plan:
            torch.ops.vllm_para.compute_vectors(stream, self.para_pages.vectors, self.para_layer, SIDE_BUFFER_KEY)
        return out


class ScaledProjection(nn.Module):
    """A fused projection whose output is scaled by a slice of the token's PARA vector."""

    def __init__(self, base_layer: nn.Module, pages: nn.Module, layer: int, start: int, end: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.para_pages = pages
        self.para_layer = layer
        self.para_start = start
        self.para_end = end

    def forward(self, x: torch.Tensor, *args, **kwargs):
        out = self.base_layer(x, *args, **kwargs)
        y = out[0] if isinstance(out, tuple) else out
        vectors = self.para_pages.gather(self.para_layer, self.para_start, self.para_end, y.shape[0])
        y = scale(y, vectors)
        return (y, *out[1:]) if isinstance(out, tuple) else y


def _get(module: nn.Module, dotted: str) -> nn.Module | None:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _set(module: nn.Module, dotted: str, value: nn.Module) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        module = getattr(module, part)
    setattr(module, last, value)


def local_layers(model: nn.Module) -> tuple[int, int, nn.ModuleList]:
    """(start, end, layers) of the decoder layers this pipeline rank holds."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no `model.layers`; PARA cannot wrap it.")
    return getattr(inner, "start_layer", 0), getattr(inner, "end_layer", len(layers)), layers


def missing_modules(model: nn.Module) -> list[str]:
    """What this model's local decoder layers lack for PARA (empty: it qualifies)."""
    start, end, layers = local_layers(model)
    missing = []
    for idx in range(start, end):
        for dotted in WRAPPED:
            if _get(layers[idx], dotted) is None:
                missing.append(f"layers.{idx}.{dotted}")
    return missing


def wrap_layers(model: nn.Module, pages: nn.Module, qkv_width: int, width: int) -> int:
    """Wrap every local decoder layer's three PARA modules; returns how many layers."""
    start, end, layers = local_layers(model)
    missing = missing_modules(model)
    if missing:
        raise TypeError(f"{type(model).__name__} cannot take PARA: missing {missing[:3]}.")
    for idx in range(start, end):
        layer, local = layers[idx], idx - start
        if isinstance(layer.input_layernorm, ResidualTap):
            continue  # already wrapped
        layer.input_layernorm = ResidualTap(layer.input_layernorm, pages, local)
        _set(layer, "self_attn.qkv_proj", ScaledProjection(layer.self_attn.qkv_proj, pages, local, 0, qkv_width))
        _set(layer, "mlp.gate_up_proj", ScaledProjection(layer.mlp.gate_up_proj, pages, local, qkv_width, width))
    return end - start
