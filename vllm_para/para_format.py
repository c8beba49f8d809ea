"""The PARA adapter format: `para_config.json` + `adapter_model.safetensors` (saving, and the
tensor shapes a config implies). Reading and validating a directory is `vllm_para.adapter`.

Runs in: every process (the API server and workers read adapters; the trainer saves them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import WEIGHTS_FILE, PARAConfig, PARAConfigError
from .core import DOWN, UP, UP_BIAS, VGWeights, tensor_name

ALLOWED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class PARAAdapterError(PARAConfigError):
    """An adapter directory cannot be loaded; the message says which file and tensor."""


@dataclass
class PARAAdapter:
    config: PARAConfig
    weights: VGWeights

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return expected_tensor_shapes(self.config)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for i in range(self.config.num_hidden_layers):
            down, up, bias = self.weights.layer(i)
            tensors[tensor_name(i, DOWN)] = down.detach().contiguous().cpu()
            tensors[tensor_name(i, UP)] = up.detach().contiguous().cpu()
            tensors[tensor_name(i, UP_BIAS)] = bias.detach().contiguous().cpu()
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "peft_type": "PARA"})
        self.config.save(directory)
        return directory


def expected_tensor_shapes(config: PARAConfig) -> dict[str, tuple[int, ...]]:
    r, H, T = config.r, config.hidden_size, config.vector_size
    shapes = {}
    for i in range(config.num_hidden_layers):
        shapes[tensor_name(i, DOWN)] = (r, H)
        shapes[tensor_name(i, UP)] = (T, r)
        shapes[tensor_name(i, UP_BIAS)] = (T,)
    return shapes
