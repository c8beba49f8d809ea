"""`PARAForCausalLM`: a frozen HF causal LM plus one trainable PARA adapter,
in the shape `transformers.Trainer` trains.

* Only the VG parameters require grad (the base model is frozen).
* `forward(input_ids, attention_mask, labels, prompt_spans, num_items_in_batch)`
  returns the HF output with `.loss`: the HF model's own causal-LM loss (summed
  over labelled tokens and divided by `num_items_in_batch`, which `Trainer`
  counts over all accumulated micro-batches, so gradient accumulation is exact).
* PARA pools each row's `prompt_spans[b] = (start, end)` (absolute positions
  made by `PARADataCollator`); a batch without them is refused, so no padding
  side or packing collator can make PARA pool a token it was not told to.
* `save_pretrained(dir)` writes the adapter format (`para_config.json` +
  `adapter_model.safetensors`); `from_pretrained(base, adapter_dir)` reloads it;
  `load_trained_weights(dir)` restores the VG from a checkpoint (resume).
* Gradient checkpointing goes through `PARAReferenceModel`, which makes the
  recompute of a checkpointed layer recompute its vectors.

The PARA math is `vllm_para.core`, applied by `vllm_para.training.reference`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..adapter import load_adapter
from ..config import DEFAULT_TARGETS, ModelShape, PARAConfig
from ..core import VGWeights, init_vg_weights
from .data import TrainerModule
from .reference import PARAReferenceModel

DEFAULT_ADAPTER_NAME = "default"


def _tensors(weights: VGWeights) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return weights.down, weights.up, weights.up_bias


class PARAForCausalLM(TrainerModule):

    def __init__(
        self,
        model: nn.Module,
        config: PARAConfig,
        weights: VGWeights | None = None,
        adapter_name: str = DEFAULT_ADAPTER_NAME,
    ):
        super().__init__()
        model.requires_grad_(False)
        self.para = PARAReferenceModel(model, adapters={})
        self.adapter_name = adapter_name
        self.para.add_adapter(adapter_name, config=config, weights=weights)
        self.vg.requires_grad_(True)

    # ---------------------------------------------------------- construction
    @classmethod
    def for_base(
        cls,
        model: nn.Module,
        r: int = 12,
        targets: tuple[str, ...] = DEFAULT_TARGETS,
        pooling: str = "last",
        base_model_name_or_path: str | None = None,
        generator: torch.Generator | None = None,
        **config_fields,
    ) -> "PARAForCausalLM":
        """A fresh adapter (`core.init_vg_weights`: outputs equal the base model's)."""
        shape = ModelShape.from_hf_config(model.config)
        name = base_model_name_or_path or getattr(model.config, "_name_or_path", "") or "base"
        config = PARAConfig(
            base_model_name_or_path=str(name), r=r, targets=tuple(targets), pooling=pooling,
            **shape.model_dump(), **config_fields,
        )
        return cls(model, config, init_vg_weights(config, generator=generator))

    @classmethod
    def from_pretrained(
        cls,
        base_model: str | Path | nn.Module,
        adapter_dir: str | Path,
        dtype: torch.dtype = torch.float32,
        adapter_name: str = DEFAULT_ADAPTER_NAME,
    ) -> "PARAForCausalLM":
        """Base model (a path, hub id or loaded model) + a saved PARA adapter, ready to train further."""
        if isinstance(base_model, nn.Module):
            model = base_model
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=dtype)
        adapter = load_adapter(adapter_dir, base_shape=ModelShape.from_hf_config(model.config))
        return cls(model, adapter.config, adapter.weights, adapter_name=adapter_name)

    # ------------------------------------------------------------- properties
    @property
    def vg(self):
        return self.para.adapters[self.adapter_name]

    @property
    def para_config(self) -> PARAConfig:
        return self.vg.config

    @property
    def base_model(self) -> nn.Module:
        return self.para.model

    @property
    def config(self):
        """The base model's HF config (Trainer reads it)."""
        return self.para.model.config

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        prompt_spans: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs,
    ):
        if prompt_spans is None:
            raise ValueError(
                "PARAForCausalLM needs `prompt_spans` (each row's prompt as [start, end) positions) in the "
                "batch: use vllm_para.training.PARADataCollator."
            )
        if num_items_in_batch is not None:
            kwargs["num_items_in_batch"] = num_items_in_batch
        return self.para(
            input_ids,
            attention_mask=attention_mask,
            prompt_spans=prompt_spans,
            adapter_names=[self.adapter_name] * input_ids.shape[0],
            labels=labels,
            **kwargs,
        )

    # ---------------------------------------------------------------- files
    def save_pretrained(self, save_directory: str | Path, **_ignored) -> Path:
        """Write `para_config.json` + `adapter_model.safetensors` (float32 VG)."""
        return self.vg.save(save_directory)

    def load_trained_weights(self, directory: str | Path) -> None:
        """Copy a saved adapter's VG weights into this one (same config)."""
        adapter = load_adapter(directory, base_shape=self.para.shape)
        if adapter.config.model_dump() != self.para_config.model_dump():
            raise ValueError(f"{directory}: adapter config differs from the one being trained")
        with torch.no_grad():
            for param, value in zip((self.vg.down, self.vg.up, self.vg.up_bias), _tensors(adapter.weights)):
                param.copy_(value)

    # ------------------------------------------------ gradient checkpointing
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs) -> None:
        self.para.gradient_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.para.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.para.is_gradient_checkpointing
