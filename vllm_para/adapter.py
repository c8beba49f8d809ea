"""PARA adapter files: save and load `para_config.json` + `adapter_model.safetensors`.

Loading validates everything before returning anything: config fields, the
presence, shape, dtype and finiteness of every tensor, and (given the base
model's shapes) that the adapter fits the base model. Files are read with
safetensors only; pickle files are never opened. Symlinks that lead out of the
adapter directory are refused, and every malformed input (see
tests/adapter_corruptions.py) ends in a `PARAConfigError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import CONFIG_FILE, WEIGHTS_FILE, ModelShape, PARAConfig, PARAConfigError, adapter_file, clip
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

    @classmethod
    def load(
        cls,
        directory: str | Path,
        base_shape: ModelShape | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> "PARAAdapter":
        return load_adapter(directory, base_shape=base_shape, dtype=dtype, device=device)


def expected_tensor_shapes(config: PARAConfig) -> dict[str, tuple[int, ...]]:
    r, H, T = config.r, config.hidden_size, config.vector_size
    shapes = {}
    for i in range(config.num_hidden_layers):
        shapes[tensor_name(i, DOWN)] = (r, H)
        shapes[tensor_name(i, UP)] = (T, r)
        shapes[tensor_name(i, UP_BIAS)] = (T,)
    return shapes


def load_adapter(
    directory: str | Path,
    base_shape: ModelShape | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> PARAAdapter:
    """Load and fully validate a PARA adapter directory.

    `base_shape` (e.g. `ModelShape.from_hf_config(hf_config)`) makes the loader
    refuse adapters trained for a base model of other dimensions.
    """
    directory = Path(directory)
    try:
        is_dir = directory.is_dir()
    except (OSError, RuntimeError):  # e.g. a symlink loop
        is_dir = False
    if not is_dir:
        raise PARAAdapterError(
            f"{directory}: not a directory. Pass the adapter directory holding "
            f"{CONFIG_FILE} and {WEIGHTS_FILE}."
        )
    config = PARAConfig.load(directory)
    if base_shape is not None:
        config.check_matches(base_shape, where=str(directory / CONFIG_FILE))

    path = directory / WEIGHTS_FILE
    if not path.exists() and not path.is_symlink():  # a dangling symlink is reported by adapter_file
        pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
        hint = f" Found {pickles}: pickle files are never loaded; convert to safetensors." if pickles else ""
        raise PARAAdapterError(f"{path}: missing.{hint}")
    target = adapter_file(directory, WEIGHTS_FILE, error=PARAAdapterError)

    expected = expected_tensor_shapes(config)
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(target), framework="pt", device="cpu") as f:
            present = set(f.keys())
            missing = [name for name in expected if name not in present]
            if missing:
                raise PARAAdapterError(
                    f"{path}: missing tensor {missing[0]!r}"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                    + f"; a PARA adapter with num_hidden_layers={config.num_hidden_layers} has "
                    f"layers.{{0..{config.num_hidden_layers - 1}}}.{{{DOWN},{UP},{UP_BIAS}}}."
                )
            unexpected = sorted(present - set(expected))
            if unexpected:
                raise PARAAdapterError(
                    f"{path}: unexpected tensor {clip(repr(unexpected[0]))}; the config "
                    f"(num_hidden_layers={config.num_hidden_layers}) does not account for it."
                )
            for name, shape in expected.items():
                # The shape comes from the header: check it before reading any data.
                got = tuple(f.get_slice(name).get_shape())
                if got != shape:
                    raise PARAAdapterError(
                        f"{path}: tensor {name!r} has shape {list(got)}, expected {list(shape)} "
                        f"(r={config.r}, hidden_size={config.hidden_size}, targets={list(config.targets)} "
                        f"-> vector size {config.vector_size})."
                    )
                t = f.get_tensor(name)
                if t.dtype not in ALLOWED_DTYPES:
                    raise PARAAdapterError(
                        f"{path}: tensor {name!r} has dtype {t.dtype}, expected one of "
                        f"{[str(d) for d in ALLOWED_DTYPES]}."
                    )
                if not torch.isfinite(t).all():
                    raise PARAAdapterError(f"{path}: tensor {name!r} contains NaN or Inf values.")
                tensors[name] = t
    except PARAAdapterError:
        raise
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError, OverflowError, MemoryError) as exc:
        # safetensors validates the header (size, offsets, dtypes) when it opens the file.
        raise PARAAdapterError(f"{path}: not a valid safetensors file ({clip(exc)}).") from exc

    L = config.num_hidden_layers

    def stack(part: str) -> torch.Tensor:
        return torch.stack([tensors[tensor_name(i, part)] for i in range(L)]).to(device=device, dtype=dtype)

    return PARAAdapter(config=config, weights=VGWeights(stack(DOWN), stack(UP), stack(UP_BIAS)))
