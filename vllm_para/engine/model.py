"""PARA versions of vLLM's Llama and Gemma models.

They are vLLM's own classes (same weight loading, tensor-parallel layers and
quantization) with one change per decoder layer: after the input norm, the
layer's PARA vectors are (at prefill) computed from the residual stream and
(always) gathered per token from the side buffer, then multiply the fused
`qkv_proj` output and the fused `gate_up_proj` output. Without
`additional_config["para"]` the models are left exactly as vLLM builds them.
"""

from __future__ import annotations


import torch
from torch import nn

from ..config import ModelShape
from ..core import scale
from . import ops  # noqa: F401  (registers torch.ops.vllm_para.compute_vectors)
from .settings import PARASettings
from .tp_layout import RankLayout



class PARADecoderLayerMixin:
    """Forward of a Llama/Gemma-style decoder layer with PARA scaling.

    Works for any vLLM decoder layer with `input_layernorm`,
    `post_attention_layernorm`, `self_attn.{qkv_proj, rotary_emb, attn, o_proj}`
    and `mlp.{gate_up_proj, act_fn, down_proj}` (Llama, Mistral, Gemma).
    """

    para_pages: nn.Module
    para_layer: int
    para_qkv_width: int

    def forward(self, positions, hidden_states, residual, **kwargs):
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        # `residual` now is the stream entering this layer: PARA pools it.
        torch.ops.vllm_para.compute_vectors(residual, self.para_pages.vectors, self.para_layer)
        vectors = self.para_pages.layer_vectors(self.para_layer, residual.shape[0])
        qkv_scale = vectors[:, : self.para_qkv_width]
        gate_up_scale = vectors[:, self.para_qkv_width :]

        hidden_states = _attention(self.self_attn, positions, hidden_states, qkv_scale)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        hidden_states = _mlp(self.mlp, hidden_states, gate_up_scale)
        return hidden_states, residual


def _attention(attn: nn.Module, positions, hidden_states, qkv_scale):
    qkv, _ = attn.qkv_proj(hidden_states)
    qkv = scale(qkv, qkv_scale)  # Q' = l_q*Q, K' = l_k*K, V' = l_v*V, before rotary
    q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
    q, k = attn.rotary_emb(positions, q, k)
    output, _ = attn.o_proj(attn.attn(q, k, v))
    return output


def _mlp(mlp: nn.Module, hidden_states, gate_up_scale):
    from vllm.model_executor.layers.fusion.fused_act_quant import maybe_fused_act_quant

    gate_up, _ = mlp.gate_up_proj(hidden_states)
    gate_up = scale(gate_up, gate_up_scale)  # G' = l_g*G, U' = l_u*U, before the activation
    x = maybe_fused_act_quant(mlp.act_fn, gate_up, mlp.down_proj)
    x, _ = mlp.down_proj(x)
    return x


_PARA_LAYER_CLASSES: dict[type, type] = {}


def _para_layer_class(layer_cls: type) -> type:
    """`PARA<Layer>`: vLLM's decoder layer class with the PARA forward."""
    if layer_cls not in _PARA_LAYER_CLASSES:
        _PARA_LAYER_CLASSES[layer_cls] = type(f"PARA{layer_cls.__name__}", (PARADecoderLayerMixin, layer_cls), {})
    return _PARA_LAYER_CLASSES[layer_cls]


class PARAModelMixin:
    """Adds PARA to a vLLM `*ForCausalLM` when `additional_config["para"]` is set."""

    def __init__(self, *, vllm_config, prefix: str = "", **kwargs) -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        settings = PARASettings.from_additional_config(vllm_config.additional_config)
        if settings is not None:
            from .runtime import install_runtime

            install_runtime(self, vllm_config, settings)

    def para_convert_layers(self, pages: nn.Module, layout: "RankLayout") -> None:
        """Give every local decoder layer the PARA forward (its weights are untouched)."""
        from vllm.model_executor.models.utils import PPMissingLayer

        for idx, layer in enumerate(self.model.layers):
            if isinstance(layer, PPMissingLayer):
                continue
            # The PARA class adds a forward and no state, so swapping the class of an
            # already-built vLLM layer is safe and keeps its parameter names.
            layer.__class__ = _para_layer_class(type(layer))
            layer.para_pages = pages
            layer.para_layer = idx
            layer.para_qkv_width = layout.qkv_width


from vllm.model_executor.models.gemma import GemmaForCausalLM  # noqa: E402
from vllm.model_executor.models.llama import LlamaForCausalLM  # noqa: E402
from vllm.model_executor.models.mistral import MistralForCausalLM  # noqa: E402


class PARALlamaForCausalLM(PARAModelMixin, LlamaForCausalLM):
    pass


class PARAMistralForCausalLM(PARAModelMixin, MistralForCausalLM):
    pass


class PARAGemmaForCausalLM(PARAModelMixin, GemmaForCausalLM):
    pass
