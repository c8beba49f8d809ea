"""Baseline adapters trained on the same data and path as PARA: LoRA, (IA)^3 and BitFit.

Each `prepare_*` takes a frozen HF causal LM and returns a module that
`transformers.Trainer` trains as it is (`forward(input_ids, attention_mask,
labels, num_items_in_batch)` returns the HF causal-LM loss; only the adapter's
parameters require grad) and that saves its own format with
`save_pretrained(directory)`. The trainer (`vllm_para.training.train`) is method-agnostic.

LoRA and (IA)^3 go through peft (`save_pretrained`: `adapter_config.json` +
`adapter_model.safetensors`, loadable by peft and by vLLM's LoRA support for
LoRA). BitFit trains a per-output bias on every q/k/v/o/gate/up/down projection
(Llama/Gemma projections have no bias, so one is added with a forward hook,
initialised at zero): `bitfit_config.json` + `bitfit.safetensors`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .data import TrainerModule

BITFIT_CONFIG_FILE = "bitfit_config.json"
BITFIT_WEIGHTS_FILE = "bitfit.safetensors"
BITFIT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("q_proj", "v_proj")
IA3_TARGETS: tuple[str, ...] = ("k_proj", "v_proj", "down_proj")
IA3_FEEDFORWARD: tuple[str, ...] = ("down_proj",)

def _peft():
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("LoRA and (IA)^3 baselines need peft: pip install 'vllm-para[train]'") from exc
    return peft


# ------------------------------------------------------------------- LoRA
def prepare_lora(
    model: nn.Module, r: int = 8, alpha: int = 16, target_modules: list[str] | tuple[str, ...] = DEFAULT_LORA_TARGETS
) -> nn.Module:
    peft = _peft()
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target_modules), task_type="CAUSAL_LM"
    )
    return peft.get_peft_model(model, config)


# ------------------------------------------------------------------ (IA)^3
def prepare_ia3(
    model: nn.Module,
    target_modules: list[str] | tuple[str, ...] = IA3_TARGETS,
    feedforward_modules: list[str] | tuple[str, ...] = IA3_FEEDFORWARD,
) -> nn.Module:
    peft = _peft()
    config = peft.IA3Config(
        target_modules=list(target_modules), feedforward_modules=list(feedforward_modules), task_type="CAUSAL_LM"
    )
    return peft.get_peft_model(model, config)


# ------------------------------------------------------------------ BitFit
class BitFit(TrainerModule):
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
                # float32 whatever the base dtype: the optimizer updates float32 weights (bf16 training)
                bias = nn.Parameter(torch.zeros(module.out_features, device=ref.device, dtype=torch.float32))
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

    @property
    def config(self):
        """The base model's HF config (Trainer reads it)."""
        return self.model.config

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs) -> None:
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.model.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.model, "is_gradient_checkpointing", False))

    def save_pretrained(self, save_directory: str | Path, **_ignored) -> Path:
        return self.save(save_directory)

    def load_trained_weights(self, directory: str | Path) -> None:
        """Copy saved biases (same modules) into this BitFit (resume)."""
        self._copy_from(Path(directory))

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
        directory = Path(directory)
        config = json.loads((directory / BITFIT_CONFIG_FILE).read_text())
        bitfit = cls(model, tuple(config["target_modules"]), config.get("base_model_name_or_path"))
        bitfit._copy_from(directory)
        return bitfit

    def _copy_from(self, directory: Path) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(directory / BITFIT_WEIGHTS_FILE))
        expected = set(self.state_tensors())
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise ValueError(f"{directory / BITFIT_WEIGHTS_FILE}: tensors do not fit the model "
                             f"(missing {missing[:3]}, unexpected {extra[:3]}).")
        with torch.no_grad():
            for name in self.module_names:
                self.biases[self._key(name)].copy_(tensors[f"{name}.bias"])


def prepare_bitfit(
    model: nn.Module, target_modules: tuple[str, ...] = BITFIT_TARGETS, base_model_name_or_path: str | None = None
) -> BitFit:
    model.requires_grad_(False)
    return BitFit(model, target_modules, base_model_name_or_path)
