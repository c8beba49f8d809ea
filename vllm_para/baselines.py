"""Baseline adapters trained on the same data as PARA: LoRA, (IA)^3 and BitFit.

Each `prepare_*` takes a frozen HF causal LM and returns a `PreparedModel`: the
module whose `requires_grad` parameters are trained, a forward returning logits,
and a `save(directory)`. The trainer (`vllm_para.train`) is method-agnostic.

LoRA and (IA)^3 go through peft (`save_pretrained`: `adapter_config.json` +
`adapter_model.safetensors`, loadable by peft and by vLLM's LoRA support for
LoRA). BitFit trains a per-output bias on every q/k/v/o/gate/up/down projection
(Llama/Gemma projections have no bias, so one is added with a forward hook,
initialised at zero): `bitfit_config.json` + `bitfit.safetensors`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

BITFIT_CONFIG_FILE = "bitfit_config.json"
BITFIT_WEIGHTS_FILE = "bitfit.safetensors"
BITFIT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("q_proj", "v_proj")
IA3_TARGETS: tuple[str, ...] = ("k_proj", "v_proj", "down_proj")
IA3_FEEDFORWARD: tuple[str, ...] = ("down_proj",)

# forward(input_ids, attention_mask, prompt_lengths) -> logits [B, S, V]
ForwardFn = Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor]


@dataclass
class PreparedModel:
    module: nn.Module
    forward: ForwardFn
    save: Callable[[Path], None]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]


def _plain_forward(module: nn.Module) -> ForwardFn:
    def forward(input_ids, attention_mask, prompt_lengths):
        return module(input_ids=input_ids, attention_mask=attention_mask).logits

    return forward


def _peft():
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("LoRA and (IA)^3 baselines need peft: pip install 'vllm-para[train]'") from exc
    return peft


# ------------------------------------------------------------------- LoRA
def prepare_lora(
    model: nn.Module, r: int = 8, alpha: int = 16, target_modules: list[str] | tuple[str, ...] = DEFAULT_LORA_TARGETS
) -> PreparedModel:
    peft = _peft()
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target_modules), task_type="CAUSAL_LM"
    )
    peft_model = peft.get_peft_model(model, config)
    return PreparedModel(peft_model, _plain_forward(peft_model), lambda out: peft_model.save_pretrained(str(out)))


# ------------------------------------------------------------------ (IA)^3
def prepare_ia3(
    model: nn.Module,
    target_modules: list[str] | tuple[str, ...] = IA3_TARGETS,
    feedforward_modules: list[str] | tuple[str, ...] = IA3_FEEDFORWARD,
) -> PreparedModel:
    peft = _peft()
    config = peft.IA3Config(
        target_modules=list(target_modules), feedforward_modules=list(feedforward_modules), task_type="CAUSAL_LM"
    )
    peft_model = peft.get_peft_model(model, config)
    return PreparedModel(peft_model, _plain_forward(peft_model), lambda out: peft_model.save_pretrained(str(out)))


# ------------------------------------------------------------------ BitFit
class BitFit(nn.Module):
    """Trainable per-output biases added (by forward hooks) to a frozen model's projections."""

    def __init__(
        self,
        model: nn.Module,
        target_modules: tuple[str, ...] = BITFIT_TARGETS,
        base_model_name_or_path: str | None = None,
    ):
        super().__init__()
        self.model = model
        self.target_modules = tuple(target_modules)
        self.base_model_name_or_path = base_model_name_or_path or getattr(
            getattr(model, "config", None), "_name_or_path", ""
        )
        self.biases = nn.ParameterDict()
        self.module_names: list[str] = []
        self._handles = []
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in self.target_modules:
                ref = module.weight
                bias = nn.Parameter(torch.zeros(module.out_features, device=ref.device, dtype=ref.dtype))
                self.biases[self._key(name)] = bias
                self.module_names.append(name)
                self._handles.append(module.register_forward_hook(self._hook(self._key(name))))
        if not self.module_names:
            raise ValueError(f"BitFit: no nn.Linear named {list(self.target_modules)} in the model.")

    @staticmethod
    def _key(module_name: str) -> str:
        return module_name.replace(".", "__")

    def _hook(self, key: str):
        def hook(module, inputs, output):
            return output + self.biases[key].to(output.dtype)

        return hook

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """`{"<module>.bias": tensor}`, the names used in `bitfit.safetensors`."""
        return {f"{n}.bias": self.biases[self._key(n)].detach().contiguous().cpu() for n in self.module_names}

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.state_tensors(), str(directory / BITFIT_WEIGHTS_FILE), metadata={"format": "pt"})
        config = {
            "peft_type": "BITFIT",
            "base_model_name_or_path": str(self.base_model_name_or_path),
            "target_modules": list(self.target_modules),
        }
        (directory / BITFIT_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, model: nn.Module, directory: str | Path) -> "BitFit":
        """Attach saved BitFit biases to `model` (hooks are added; the model's weights are not changed)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config = json.loads((directory / BITFIT_CONFIG_FILE).read_text())
        bitfit = cls(model, tuple(config["target_modules"]), config.get("base_model_name_or_path"))
        tensors = load_file(str(directory / BITFIT_WEIGHTS_FILE))
        expected = set(bitfit.state_tensors())
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise ValueError(f"{directory / BITFIT_WEIGHTS_FILE}: tensors do not fit the model (missing {missing[:3]}, unexpected {extra[:3]}).")
        with torch.no_grad():
            for name in bitfit.module_names:
                bitfit.biases[cls._key(name)].copy_(tensors[f"{name}.bias"])
        return bitfit


def prepare_bitfit(
    model: nn.Module, target_modules: tuple[str, ...] = BITFIT_TARGETS, base_model_name_or_path: str | None = None
) -> PreparedModel:
    bitfit = BitFit(model, target_modules, base_model_name_or_path)
    return PreparedModel(bitfit, _plain_forward(bitfit), bitfit.save)
