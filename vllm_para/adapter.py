"""PARA adapter files: save and load `para_config.json` + `adapter_model.safetensors`.

Loading validates everything before returning anything: config fields, the
presence, shape, dtype and finiteness of every tensor, and (given the base
model's shapes) that the adapter fits the base model. Files are read with
safetensors only; pickle files are never opened. Symlinks that lead out of the
adapter directory are refused, and every malformed input (see
tests/adapter_corruptions.py) ends in a `PARAConfigError` naming the file.

Runs in: the API server (reads and validates adapter files once) and every worker (parses the bytes it is sent).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load

from .config import (
    CONFIG_FILE, MAX_CONFIG_BYTES, MAX_WEIGHTS_BYTES, WEIGHTS_FILE, ModelShape, PARAConfig, clip,
    read_adapter_bytes, read_config_bytes,
)
from . import ia3
from .core import DOWN, UP, UP_BIAS, VGWeights, tensor_name
from .para_format import ALLOWED_DTYPES, PARAAdapter, PARAAdapterError, expected_tensor_shapes

__all__ = ["ALLOWED_DTYPES", "DEFAULT_READ_TIMEOUT_S", "AdapterFiles", "PARAAdapter", "PARAAdapterError",
           "expected_tensor_shapes", "load_adapter", "load_ia3_adapter", "parse_adapter", "read_adapter_files"]

DEFAULT_READ_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class AdapterFiles:
    """An adapter directory's bytes, read once: what the API server validates and ships to
    every worker (which then never opens the files). `digest` is the weights' sha256."""

    directory: str
    config: bytes
    weights: bytes
    digest: str
    kind: str = "para"  # "para" (para_config.json) or "ia3" (PEFT adapter_config.json, peft_type IA3)

    @property
    def nbytes(self) -> int:
        return len(self.config) + len(self.weights)

    def to_wire(self) -> list:
        """Plain values for `collective_rpc` (vLLM's msgpack encoder, no pickle)."""
        return [self.directory, self.config, self.weights, self.digest, self.kind]

    @classmethod
    def from_wire(cls, wire) -> "AdapterFiles":
        directory, config, weights, digest, kind = wire
        if kind not in ("para", "ia3"):
            raise PARAAdapterError(f"unknown adapter kind {clip(repr(kind))}")
        return cls(str(directory), bytes(config), bytes(weights), str(digest), str(kind))


def read_adapter_files(directory: str | Path, timeout_s: float | None = DEFAULT_READ_TIMEOUT_S,
                       kind: str | None = None) -> AdapterFiles:
    """Read an adapter directory's two files once (`config.read_adapter_bytes`: O_NOFOLLOW |
    O_NONBLOCK, checks on the open descriptor), within `timeout_s` seconds. `kind`: "para",
    "ia3", or None to tell from the directory (a PEFT config of another type is refused).

    The read runs in a daemon thread: a file system that never answers (a stuck network mount)
    makes this call fail after the deadline with a `PARAAdapterError` instead of hanging the
    caller; the thread itself stays blocked in the kernel until the mount answers."""
    if timeout_s is None:
        return _read_files(Path(directory), kind)
    box: dict = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["files"] = _read_files(Path(directory), kind)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="vllm-para-adapter-read", daemon=True).start()
    if not done.wait(timeout_s):
        raise PARAAdapterError(
            f"{directory}: reading the adapter took longer than {timeout_s:g} s (a stuck network mount, or a "
            "file that never answers?); the load is refused. Retry once the storage answers, or raise "
            "--para-load-timeout."
        )
    if "error" in box:
        raise box["error"]
    return box["files"]


def _read_files(directory: Path, kind: str | None = None) -> AdapterFiles:
    try:
        is_dir = directory.is_dir()
    except (OSError, RuntimeError, ValueError):  # e.g. a symlink loop, a name too long
        is_dir = False
    if not is_dir:
        raise PARAAdapterError(
            f"{directory}: not a directory. Pass the adapter directory holding "
            f"{CONFIG_FILE} and {WEIGHTS_FILE}."
        )
    kind, config = _read_config(directory, kind)
    path = directory / WEIGHTS_FILE
    if not path.exists() and not path.is_symlink():  # a dangling symlink is reported by adapter_file
        pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
        hint = f" Found {pickles}: pickle files are never loaded; convert to safetensors." if pickles else ""
        raise PARAAdapterError(f"{path}: missing.{hint}")
    weights = read_adapter_bytes(directory, WEIGHTS_FILE, MAX_WEIGHTS_BYTES, error=PARAAdapterError)
    return AdapterFiles(str(directory), config, weights, hashlib.sha256(weights).hexdigest(), kind)


def _read_config(directory: Path, kind: str | None) -> tuple[str, bytes]:
    """(kind, config bytes): PARA's `para_config.json`, or PEFT's `adapter_config.json` of an
    (IA)^3 adapter (`kind` None: the directory tells; a PEFT config of another type, e.g. LoRA,
    is refused with the reason). The config is validated before the weights are read, so a
    broken one is what gets reported."""
    para, peft = directory / CONFIG_FILE, directory / ia3.IA3_CONFIG
    if kind is None:
        has_para, has_peft = para.exists() or para.is_symlink(), peft.exists() or peft.is_symlink()
        kind = ia3.KIND if has_peft and not has_para and ia3.is_peft_config(directory) else "para"
    if kind == "para":
        config = read_config_bytes(directory)
        PARAConfig.from_bytes(config, para)
        return "para", config
    config = read_adapter_bytes(directory, ia3.IA3_CONFIG, MAX_CONFIG_BYTES, error=PARAAdapterError,
                                missing=f" A PEFT (IA)^3 adapter directory holds {ia3.IA3_CONFIG} and {WEIGHTS_FILE}.")
    ia3.parse_ia3_config(ia3.parse_json(config, str(peft)), str(directory))  # refuses other PEFT types
    return ia3.KIND, config


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
    return parse_adapter(read_adapter_files(directory), base_shape=base_shape, dtype=dtype, device=device)


def parse_adapter(
    files: AdapterFiles,
    base_shape: ModelShape | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> PARAAdapter:
    """Validate an adapter from its bytes (no file access): config fields, the base-model fit,
    and every tensor's presence, shape, dtype and finiteness."""
    directory = Path(files.directory)
    if files.kind == "ia3":  # a PEFT (IA)^3 adapter, converted exactly (vllm_para/ia3.py)
        if base_shape is None:
            raise PARAAdapterError(f"{directory}: an (IA)^3 adapter records no model shapes; pass base_shape.")
        return ia3.parse_ia3_bytes(files.config, files.weights, base_shape, where=str(directory), dtype=dtype,
                                   device=device).adapter
    config = PARAConfig.from_bytes(files.config, directory / CONFIG_FILE)
    if base_shape is not None:
        config.check_matches(base_shape, where=str(directory / CONFIG_FILE))
    path = directory / WEIGHTS_FILE
    try:
        tensors = safetensors_load(files.weights)
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError, OverflowError, MemoryError) as exc:
        # safetensors validates the header (size, offsets, dtypes) before building any tensor.
        raise PARAAdapterError(f"{path}: not a valid safetensors file ({clip(exc)}).") from exc
    expected = expected_tensor_shapes(config)
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise PARAAdapterError(
            f"{path}: missing tensor {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; a PARA adapter with num_hidden_layers={config.num_hidden_layers} has "
            f"layers.{{0..{config.num_hidden_layers - 1}}}.{{{DOWN},{UP},{UP_BIAS}}}."
        )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise PARAAdapterError(
            f"{path}: unexpected tensor {clip(repr(unexpected[0]))}; the config "
            f"(num_hidden_layers={config.num_hidden_layers}) does not account for it."
        )
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise PARAAdapterError(
                f"{path}: tensor {name!r} has shape {list(t.shape)}, expected {list(shape)} "
                f"(r={config.r}, hidden_size={config.hidden_size}, targets={list(config.targets)} "
                f"-> vector size {config.vector_size})."
            )
        if t.dtype not in ALLOWED_DTYPES:
            raise PARAAdapterError(
                f"{path}: tensor {name!r} has dtype {t.dtype}, expected one of "
                f"{[str(d) for d in ALLOWED_DTYPES]}."
            )
        if not torch.isfinite(t).all():
            raise PARAAdapterError(f"{path}: tensor {name!r} contains NaN or Inf values.")

    L = config.num_hidden_layers

    def stack(part: str) -> torch.Tensor:
        return torch.stack([tensors[tensor_name(i, part)] for i in range(L)]).to(device=device, dtype=dtype)

    return PARAAdapter(config=config, weights=VGWeights(stack(DOWN), stack(UP), stack(UP_BIAS)))


def load_ia3_adapter(
    directory: str | Path,
    base_shape: ModelShape,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> ia3.IA3Adapter:
    """Load, validate and convert a PEFT (IA)^3 adapter directory for a base model of shape
    `base_shape` (required: (IA)^3 files do not record it), through the shared reader."""
    files = read_adapter_files(directory, kind=ia3.KIND)
    return ia3.parse_ia3_bytes(files.config, files.weights, base_shape, where=str(directory), dtype=dtype,
                               device=device)
