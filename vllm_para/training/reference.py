"""A transformers reference implementation of PARA (no vLLM).

`PARAReferenceModel` wraps a Hugging Face `LlamaForCausalLM` / `GemmaForCausalLM`
and applies PARA adapters with hooks, using the math in `core.py` only:

* a forward pre-hook on every decoder layer pools the residual stream entering
  the layer over each row's prompt tokens and runs that row's vector generator
  (once per call: at the prefill of `generate`, the vectors are then frozen for
  every decode step);
* forward hooks on q/k/v/gate/up projections multiply their outputs by the
  row's vectors (broadcast over time).

Rows of one batch may use different adapters, or none (`None`: base model).
It is the ground truth that the vLLM integration and the trainer are checked
against, and it is differentiable with respect to the adapter parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .. import core
from ..adapter import PARAAdapter, load_adapter
from ..config import TARGET_ORDER, ModelShape, PARAConfig, PARAConfigError

# target -> (module path inside a decoder layer)
PROJECTIONS: dict[str, tuple[str, str]] = {
    "q": ("self_attn", "q_proj"),
    "k": ("self_attn", "k_proj"),
    "v": ("self_attn", "v_proj"),
    "g": ("mlp", "gate_proj"),
    "u": ("mlp", "up_proj"),
}

AdapterNames = Sequence[str | None] | str | None


class VectorGenerator(nn.Module):
    """One adapter's VG parameters for all layers (float32), plus its config."""

    def __init__(self, config: PARAConfig, weights: core.VGWeights | None = None):
        super().__init__()
        self.config = config
        weights = weights if weights is not None else core.init_vg_weights(config)
        L, r, H, T = config.num_hidden_layers, config.r, config.hidden_size, config.vector_size
        expected = {"down": (L, r, H), "up": (L, T, r), "up_bias": (L, T)}
        for name, shape in expected.items():
            got = tuple(getattr(weights, name).shape)
            if got != shape:
                raise PARAConfigError(f"VG weights {name!r} have shape {list(got)}, expected {list(shape)}")
        self.down = nn.Parameter(weights.down.detach().clone().float())
        self.up = nn.Parameter(weights.up.detach().clone().float())
        self.up_bias = nn.Parameter(weights.up_bias.detach().clone().float())

    @classmethod
    def from_adapter(cls, adapter: PARAAdapter) -> "VectorGenerator":
        return cls(adapter.config, adapter.weights)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.down[i], self.up[i], self.up_bias[i]

    def weights(self) -> core.VGWeights:
        """Detached copy of the parameters."""
        return core.VGWeights(*(p.detach().clone() for p in (self.down, self.up, self.up_bias)))

    def to_adapter(self) -> PARAAdapter:
        return PARAAdapter(config=self.config, weights=self.weights())

    def save(self, directory: str | Path) -> Path:
        return self.to_adapter().save(directory)


class AdapterDict(nn.ModuleDict):
    """`nn.ModuleDict` keyed by adapter name. Any string is a valid name (also
    "train", "to" or "v1.2"): submodule keys are escaped internally."""

    @staticmethod
    def _key(name: str) -> str:
        if not isinstance(name, str) or not name:
            raise KeyError(f"adapter names are non-empty strings, got {name!r}")
        return "adapter_" + name.replace("%", "%25").replace(".", "%2E")

    @staticmethod
    def _name(key: str) -> str:
        return key[len("adapter_") :].replace("%2E", ".").replace("%25", "%")

    def __getitem__(self, name: str) -> "VectorGenerator":
        return self._modules[self._key(name)]

    def __setitem__(self, name: str, module: nn.Module) -> None:
        self.add_module(self._key(name), module)

    def __delitem__(self, name: str) -> None:
        del self._modules[self._key(name)]

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and bool(name) and self._key(name) in self._modules

    def __iter__(self):
        return (self._name(k) for k in self._modules)

    def keys(self):
        return list(iter(self))

    def items(self):
        return [(self._name(k), m) for k, m in self._modules.items()]


@dataclass
class GreedyResult:
    """Greedy continuation of one prompt: generated ids (no prompt) and the
    float32 logprob of each chosen token under the model's raw logits."""

    token_ids: list[int]
    logprobs: list[float]


@dataclass
class _CallState:
    """Per-call row assignment and the vectors computed for it."""

    adapters: list[str | None]
    starts: list[int]  # first prompt position of each row in the (padded) sequence
    ends: list[int]  # exclusive end of each row's prompt
    seq_len: int  # sequence length of the call that computes the vectors
    vectors: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def expand_to(self, batch: int) -> None:
        """Follow HF generate's `repeat_interleave` expansion (beams / return sequences)."""
        n = len(self.adapters)
        if batch == n:
            return
        if batch % n:
            raise RuntimeError(f"PARA: batch of {batch} rows does not expand {n} prompts")
        k = batch // n
        self.adapters = [a for a in self.adapters for _ in range(k)]
        self.starts = [s for s in self.starts for _ in range(k)]
        self.ends = [e for e in self.ends for _ in range(k)]

    def fresh(self) -> "_CallState":
        """The same rows and prompts with no vectors yet (a checkpointed layer's recompute)."""
        return _CallState(list(self.adapters), list(self.starts), list(self.ends), self.seq_len)


class PARAReferenceModel(nn.Module):
    """An HF causal LM with PARA adapters applied by hooks (see module docstring)."""

    def __init__(self, model: nn.Module, adapters: dict[str, PARAAdapter | VectorGenerator] | None = None):
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        self.shape = ModelShape.from_hf_config(model.config)
        self.adapters = AdapterDict()
        self._state: _CallState | None = None
        # Vectors of the last forward/generate call: {layer: {target: [B, size]}}
        # (detached; only targets some row's adapter has; ones for the other rows).
        self.last_vectors: dict[int, dict[str, torch.Tensor]] = {}
        # The pooling function (core.pool_prompts); a perturbation analysis swaps in another,
        # equally valid float32 one (e.g. another summation order) to measure the conditioning.
        self.pool_fn = core.pool_prompts
        self._hooks = []
        layers = self._layers()
        if len(layers) != self.shape.num_hidden_layers:
            raise ValueError(f"model has {len(layers)} decoder layers, config says {self.shape.num_hidden_layers}")
        for i, layer in enumerate(layers):
            self._hooks.append(layer.register_forward_pre_hook(self._make_layer_hook(i), with_kwargs=True))
            for target, (parent, child) in PROJECTIONS.items():
                proj = getattr(getattr(layer, parent), child)
                self._hooks.append(proj.register_forward_hook(self._make_proj_hook(i, target)))
        for name, adapter in (adapters or {}).items():
            if isinstance(adapter, VectorGenerator):
                self._register(name, adapter)
            else:
                self.add_adapter(name, adapter.config, adapter.weights)

    # ------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        base_path: str | Path,
        adapters: dict[str, str | Path] | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> "PARAReferenceModel":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=dtype).to(device).eval()
        shape = ModelShape.from_hf_config(model.config)
        loaded = {name: load_adapter(path, base_shape=shape) for name, path in (adapters or {}).items()}
        return cls(model, loaded).to(device)

    def _layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def default_config(self, **overrides) -> PARAConfig:
        """A PARAConfig for this base model (default r/targets/pooling unless overridden)."""
        base = getattr(self.model.config, "_name_or_path", "") or "base"
        return PARAConfig(base_model_name_or_path=str(base), **self.shape.model_dump(), **overrides)

    def add_adapter(
        self,
        name: str,
        config: PARAConfig | None = None,
        weights: core.VGWeights | None = None,
        **config_overrides,
    ) -> VectorGenerator:
        """Add an adapter; `config=None` builds one for this base model (with
        `config_overrides`, e.g. targets=("q",), pooling="mean"); `weights=None`
        gives a fresh VG (`core.init_vg_weights`: outputs equal the base model)."""
        if config is None:
            config = self.default_config(**config_overrides)
        elif config_overrides:
            config = PARAConfig.model_validate({**config.model_dump(), **config_overrides})
        config.check_matches(self.shape, where=f"adapter {name!r}")
        vg = VectorGenerator(config, weights)
        return self._register(name, vg)

    def _register(self, name: str, vg: VectorGenerator) -> VectorGenerator:
        vg.config.check_matches(self.shape, where=f"adapter {name!r}")
        device = next(self.model.parameters()).device
        self.adapters[name] = vg.to(device)
        return self.adapters[name]

    # ------------------------------------------------------------------ hooks
    def _make_layer_hook(self, layer_idx: int):
        def hook(module, args, kwargs):
            state = self._state
            if state is None or layer_idx in state.vectors:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            state.vectors[layer_idx] = self._layer_vectors(layer_idx, hidden, state)
            return None

        return hook

    def _make_proj_hook(self, layer_idx: int, target: str):
        def hook(module, args, output):
            state = self._state
            if state is None:
                return None
            vec = state.vectors.get(layer_idx, {}).get(target)
            if vec is None:
                return None
            if vec.shape[0] != output.shape[0]:
                raise RuntimeError(
                    f"PARA: layer {layer_idx} {target}: {output.shape[0]} rows but vectors for {vec.shape[0]}"
                )
            return core.scale(output, vec)

        return hook

    def _layer_vectors(self, layer_idx: int, hidden: torch.Tensor, state: _CallState) -> dict[str, torch.Tensor]:
        B, S, H = hidden.shape
        state.expand_to(B)
        if S != state.seq_len:
            raise RuntimeError(
                f"PARA: vectors must be computed from the whole prompt ({state.seq_len} positions), "
                f"but layer {layer_idx} sees {S}"
            )
        flat = hidden.reshape(B * S, H)
        # The VG runs in float32 (core.vg_forward) also under mixed-precision autocast, as vLLM runs it.
        with torch.autocast(hidden.device.type, enabled=False):
            return self._vectors_fp32(layer_idx, hidden, flat, state)

    def _vectors_fp32(
        self, layer_idx: int, hidden: torch.Tensor, flat: torch.Tensor, state: _CallState
    ) -> dict[str, torch.Tensor]:
        B, S = hidden.shape[:2]
        rows_by_target: dict[str, list[torch.Tensor | None]] = {t: [None] * B for t in TARGET_ORDER}
        groups: dict[str, list[int]] = {}
        for b, name in enumerate(state.adapters):
            if name is not None:
                groups.setdefault(name, []).append(b)
        for name, rows in groups.items():
            vg = self.adapters[name]
            starts = [b * S + state.starts[b] for b in rows]
            ends = [b * S + state.ends[b] for b in rows]
            pooled = self.pool_fn(flat, starts, ends, vg.config.pooling)
            l = core.vg_forward(pooled, *vg.layer(layer_idx), out_dtype=hidden.dtype)
            for target, vec in core.split_vectors(l, vg.config.split_sizes()).items():
                for j, b in enumerate(rows):
                    rows_by_target[target][b] = vec[j]
        vectors = {}
        for target, rows in rows_by_target.items():
            if all(v is None for v in rows):
                continue
            ones = hidden.new_ones(self.shape.target_size(target))
            vectors[target] = torch.stack([ones if v is None else v for v in rows]).unsqueeze(1)
        return vectors

    # --------------------------------------------------------------- helpers
    def _row_adapters(self, adapter_names: AdapterNames, batch: int) -> list[str | None]:
        if adapter_names is None or isinstance(adapter_names, str):
            names = [adapter_names] * batch
        else:
            names = list(adapter_names)
        if len(names) != batch:
            raise ValueError(f"{len(names)} adapter names for a batch of {batch}")
        for n in names:
            if n is not None and n not in self.adapters:
                raise KeyError(f"unknown PARA adapter {n!r}; loaded: {sorted(self.adapters)}")
        return names

    @staticmethod
    def _prompt_spans(
        attention_mask: torch.Tensor, prompt_lengths: Sequence[int] | torch.Tensor | None
    ) -> tuple[list[int], list[int]]:
        """Each row's prompt starts at its first non-pad position; it has
        `prompt_lengths[b]` tokens (default: all its non-pad tokens)."""
        mask = attention_mask.bool().cpu()
        B, S = mask.shape
        real = mask.sum(dim=1).tolist()
        first = [int(torch.nonzero(mask[b])[0]) if real[b] else S for b in range(B)]
        lengths = real if prompt_lengths is None else [int(n) for n in prompt_lengths]
        if len(lengths) != B:
            raise ValueError(f"{len(lengths)} prompt lengths for a batch of {B}")
        starts, ends = [], []
        for b in range(B):
            s, e = first[b], first[b] + lengths[b]
            if lengths[b] < 1 or e > S or not bool(mask[b, s:e].all()):
                raise ValueError(f"row {b}: prompt of {lengths[b]} tokens from position {s} is not all real tokens")
            starts.append(s)
            ends.append(e)
        return starts, ends

    @staticmethod
    def _explicit_spans(
        attention_mask: torch.Tensor, prompt_spans: Sequence[Sequence[int]] | torch.Tensor
    ) -> tuple[list[int], list[int]]:
        """`prompt_spans[b] = (start, end)`: row b's prompt is positions [start, end) of
        the padded row (whatever the padding side); every one must be a real token."""
        mask = attention_mask.bool().cpu()
        B, S = mask.shape
        spans = prompt_spans.tolist() if isinstance(prompt_spans, torch.Tensor) else [list(x) for x in prompt_spans]
        if len(spans) != B or any(len(x) != 2 for x in spans):
            raise ValueError(f"prompt_spans must be {B} (start, end) pairs, got {spans}")
        starts, ends = [], []
        for b, (s, e) in enumerate(spans):
            s, e = int(s), int(e)
            if not 0 <= s < e <= S or not bool(mask[b, s:e].all()):
                raise ValueError(f"row {b}: prompt span [{s}, {e}) is not a run of real tokens")
            starts.append(s)
            ends.append(e)
        return starts, ends

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------- gradient checkpointing
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs) -> None:
        """HF gradient checkpointing of the base model's decoder layers, made PARA-aware:
        a layer's recompute (in backward) runs under the rows and prompts of the call
        that checkpointed it and recomputes that layer's vectors the same way, so the
        VG parameters get the gradients they get without checkpointing. Non-reentrant
        checkpointing only (the base is frozen: no input of a layer needs grad)."""
        kw = dict(gradient_checkpointing_kwargs or {})
        if kw.get("use_reentrant", False):
            raise ValueError("PARA supports non-reentrant gradient checkpointing only (use_reentrant=False)")
        kw["use_reentrant"] = False
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw, **kwargs)
        for layer in self._layers():
            inner = getattr(layer, "_gradient_checkpointing_func", None)
            if inner is not None and not getattr(inner, "_para", False):
                layer._gradient_checkpointing_func = self._para_checkpoint(inner)

    def gradient_checkpointing_disable(self) -> None:
        self.model.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.model, "is_gradient_checkpointing", False))

    def _para_checkpoint(self, inner):
        def checkpoint(function, *args, **kwargs):
            state = self._state

            def run(*a, **k):
                # forward: the call's own state; recompute (in backward, after the call
                # ended): the same rows and prompts, this layer's vectors recomputed.
                previous = self._state
                self._state = state if previous is state else (None if state is None else state.fresh())
                try:
                    return function(*a, **k)
                finally:
                    self._state = previous

            return inner(run, *args, **kwargs)

        checkpoint._para = True
        return checkpoint

    def _finish_call(self) -> None:
        state, self._state = self._state, None
        if state is not None:
            self.last_vectors = {
                i: {t: v.detach()[:, 0] for t, v in vecs.items()} for i, vecs in state.vectors.items()
            }

    # --------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_lengths: Sequence[int] | torch.Tensor | None = None,
        adapter_names: AdapterNames = None,
        prompt_spans: Sequence[Sequence[int]] | torch.Tensor | None = None,
        **kwargs,
    ):
        """Teacher-forced forward; returns the HF output (`.logits`; `.loss` when
        `labels` are passed, computed by the HF model).

        Row b's prompt is its first `prompt_lengths[b]` real tokens (default: all
        of them), or explicitly positions `[start, end)` of the padded row with
        `prompt_spans[b] = (start, end)`; vectors are pooled from exactly those
        positions. Left and right padding both work; positions follow the
        attention mask like HF generate.
        """
        if self._state is not None:
            raise RuntimeError("PARA: nested call")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if prompt_spans is not None:
            if prompt_lengths is not None:
                raise ValueError("pass prompt_lengths or prompt_spans, not both")
            starts, ends = self._explicit_spans(attention_mask, prompt_spans)
        else:
            starts, ends = self._prompt_spans(attention_mask, prompt_lengths)
        names = self._row_adapters(adapter_names, input_ids.shape[0])
        if "position_ids" not in kwargs:
            pos = attention_mask.long().cumsum(-1) - 1
            kwargs["position_ids"] = pos.masked_fill(attention_mask == 0, 0)
        kwargs.pop("use_cache", None)  # vectors belong to this call: no cache to continue from
        self._state = _CallState(names, starts, ends, seq_len=input_ids.shape[1])
        try:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        finally:
            self._finish_call()

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        adapter_names: AdapterNames = None,
        **generate_kwargs,
    ):
        """HF `generate` (KV cache) on LEFT-padded prompts; vectors are computed
        at the prefill from each row's real prompt tokens and reused after."""
        if self._state is not None:
            raise RuntimeError("PARA: nested call")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("generate expects LEFT-padded prompts (a row ends with padding)")
        starts, ends = self._prompt_spans(attention_mask, None)
        names = self._row_adapters(adapter_names, input_ids.shape[0])
        self._state = _CallState(names, starts, ends, seq_len=input_ids.shape[1])
        try:
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        finally:
            self._finish_call()

    # ------------------------------------------------------- list-based API
    def _left_pad(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        pad = self.model.config.pad_token_id
        pad = 0 if pad is None else pad
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {b} is empty")
            ids[b, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[b, width - len(p) :] = 1
        return ids.to(self._device()), mask.to(self._device())

    @torch.no_grad()
    def sequence_logprobs(
        self, prompt_ids: Sequence[int], completion_ids: Sequence[int], adapter_name: str | None = None
    ) -> list[float]:
        """float32 logprob of each completion token given the prompt and the
        previous completion tokens (teacher forcing)."""
        n, m = len(prompt_ids), len(completion_ids)
        ids = torch.tensor([list(prompt_ids) + list(completion_ids)], dtype=torch.long, device=self._device())
        logits = self.forward(ids, prompt_lengths=[n], adapter_names=[adapter_name]).logits[0].float()
        logprobs = torch.log_softmax(logits[n - 1 : n - 1 + m], dim=-1)
        return logprobs.gather(1, ids[0, n:].unsqueeze(1)).squeeze(1).tolist()

    @torch.no_grad()
    def greedy(
        self,
        prompt_ids_list: Sequence[Sequence[int]],
        adapter_names: AdapterNames = None,
        max_new_tokens: int = 16,
        stop_at_eos: bool = True,
    ) -> list[GreedyResult]:
        """Batched greedy decoding with KV cache. With `stop_at_eos` a row ends
        after emitting EOS (included); otherwise exactly `max_new_tokens` tokens."""
        ids, mask = self._left_pad(prompt_ids_list)
        eos = self.model.generation_config.eos_token_id if stop_at_eos else []
        out = self.generate(
            ids,
            mask,
            adapter_names,
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            eos_token_id=eos,
            pad_token_id=self.model.config.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        new = out.sequences[:, ids.shape[1] :]
        logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
        chosen = logprobs.gather(2, new.unsqueeze(2)).squeeze(2)
        eos_set = set([eos] if isinstance(eos, int) else (eos or []))
        results = []
        for b in range(new.shape[0]):
            toks, lps = [], []
            for t, lp in zip(new[b].tolist(), chosen[b].tolist()):
                toks.append(t)
                lps.append(lp)
                if t in eos_set:
                    break
            results.append(GreedyResult(toks, lps))
        return results


__all__ = ["AdapterDict", "GreedyResult", "PARAReferenceModel", "VectorGenerator", "PROJECTIONS"]
