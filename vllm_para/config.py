"""The PARA adapter config (`para_config.json`): a typed, validated contract.

The config names the base model it was trained for and that model's shapes, so a
loader can refuse an adapter built for another base model before touching any
weights.

Runs in: every process, and the trainer.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

CONFIG_FILE = "para_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# Sanity limits for what a config file may claim. A real config is a few hundred
# bytes and real models are far below these sizes; anything above is a corrupt
# or hostile file, refused before it can drive an allocation.
MAX_CONFIG_BYTES = 64 * 1024
MAX_LAYERS = 4096
MAX_DIM = 1 << 20  # hidden_size, q_size, kv_size, intermediate_size
MAX_RANK = 4096
MAX_NAME_CHARS = 4096
MAX_WEIGHTS_BYTES = 4 << 30  # r=64 on a 70B model is about 1 GB

# The fixed order in which the generated vector `l` is split. Never reorder:
# adapter files on disk depend on it.
TARGET_ORDER: tuple[str, ...] = ("q", "k", "v", "g", "u")
Target = Literal["q", "k", "v", "g", "u"]
DEFAULT_TARGETS: tuple[str, ...] = ("q", "v", "u")
# How the VG reads the prompt: its final token, the mean of all its tokens, or the
# mean leaving out the first token. On real models the first (sink) token's hidden
# state can be ~100x the others' norm, so it dominates "mean" and makes the pooled
# vector ill-conditioned (summation order alone moves logprobs ~1e-3 on SmolLM2);
# "mean_skip_first" is the well-conditioned variant. docs/exactness.md.
Pooling = Literal["last", "mean", "mean_skip_first"]
WHOLE_PROMPT_POOLINGS: frozenset[str] = frozenset({"mean", "mean_skip_first"})


class PARAConfigError(ValueError):
    """An adapter config is missing, malformed or does not fit the base model."""


def clip(text: object, limit: int = 200) -> str:
    """`text` made safe for an error message: non-printable characters (lone
    surrogates, control bytes) escaped, and cut to about `limit` characters."""
    text = str(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    return text


def adapter_file(
    directory: str | Path, name: str, error: type[PARAConfigError] = PARAConfigError, missing: str = ""
) -> Path:
    """The regular file `name` inside an adapter directory, resolved.

    Refuses a symlink that resolves outside the directory (an adapter path must
    not be a way to read other files), symlink loops, and anything that is not a
    regular file (a directory, a FIFO, a device). `missing` is appended to the
    message when the file does not exist."""
    directory = Path(directory)
    path = directory / name
    try:
        root = directory.resolve()
        target = path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop (Python < 3.13)
        raise error(f"{path}: cannot resolve the path (symlink loop?): {clip(exc)}") from exc
    if not target.is_relative_to(root):
        raise error(
            f"{path}: is a symlink to {clip(target)}, outside the adapter directory {clip(root)}; "
            "refusing to follow it. Copy the file into the adapter directory."
        )
    try:
        st = os.stat(target)
    except FileNotFoundError:
        if path.is_symlink():
            raise error(f"{path}: dangling symlink to {clip(target)}.") from None
        raise error(f"{path}: missing.{missing}") from None
    except (OSError, ValueError) as exc:
        raise error(f"{path}: cannot be read ({clip(exc)}).") from exc
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path}: is a directory, not a file.{missing}")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: not a regular file (a FIFO, socket or device?).")
    return target


def read_adapter_bytes(
    directory: str | Path, name: str, limit: int, error: type[PARAConfigError] = PARAConfigError, missing: str = ""
) -> bytes:
    """The bytes of the regular file `name` in an adapter directory, read once.

    `adapter_file` resolves the name and gives the precise message for what is wrong with it;
    then the resolved path is opened with O_NOFOLLOW | O_NONBLOCK (a FIFO or device opens
    without waiting for a writer; a component swapped for a symlink since is refused), and
    every decision is made on that open descriptor: fstat (a regular file, at most `limit`
    bytes), the real path it names (still inside the directory), and the bytes read from it.
    Nothing is opened by name again. A file system that hangs (a stuck NFS or FUSE mount)
    can still block this call: callers run it with a deadline (`adapter.read_adapter_files`)."""
    path = Path(directory) / name
    target = adapter_file(directory, name, error, missing)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags)
    except OSError as exc:
        raise error(f"{path}: cannot be opened ({clip(exc)}); was it replaced while being loaded?") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: not a regular file (a FIFO, socket or device?).")
        if st.st_size > limit:
            raise error(f"{path}: too large ({st.st_size} bytes, over the limit of {limit}).")
        proc = f"/proc/self/fd/{fd}"
        if os.path.exists(proc):
            real = Path(os.readlink(proc))
            if not real.is_relative_to(Path(directory).resolve()):
                raise error(f"{path}: now resolves to {clip(real)}, outside the adapter directory; refusing it.")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 24, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise error(f"{path}: cannot be read ({clip(exc)}).") from exc
    finally:
        os.close(fd)
    if size > limit:
        raise error(f"{path}: too large (over the limit of {limit} bytes).")
    return b"".join(chunks)


class ModelShape(BaseModel):
    """The base-model dimensions that PARA vectors are sized by."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_hidden_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    q_size: int = Field(ge=1, description="num_attention_heads * head_dim")
    kv_size: int = Field(ge=1, description="num_key_value_heads * head_dim")
    intermediate_size: int = Field(ge=1)

    @classmethod
    def from_hf_config(cls, hf_config: Any) -> "ModelShape":
        """Read the shapes from a transformers `PretrainedConfig` (Llama/Gemma-style)."""
        text_config = getattr(hf_config, "text_config", None) or hf_config
        heads = text_config.num_attention_heads
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
        kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
        return cls(
            num_hidden_layers=text_config.num_hidden_layers,
            hidden_size=text_config.hidden_size,
            q_size=heads * head_dim,
            kv_size=kv_heads * head_dim,
            intermediate_size=text_config.intermediate_size,
        )

    def target_size(self, target: str) -> int:
        return {
            "q": self.q_size,
            "k": self.kv_size,
            "v": self.kv_size,
            "g": self.intermediate_size,
            "u": self.intermediate_size,
        }[target]


class PARAConfig(ModelShape):
    """Contents of `para_config.json`. Unknown fields are rejected."""

    peft_type: Literal["PARA"] = "PARA"
    base_model_name_or_path: str = Field(max_length=MAX_NAME_CHARS)
    r: int = Field(default=12, ge=1, le=MAX_RANK, description="VG bottleneck size")
    targets: tuple[Target, ...] = DEFAULT_TARGETS
    pooling: Pooling = "last"
    activation: Literal["gelu"] = "gelu"

    @field_validator("num_hidden_layers", "hidden_size", "q_size", "kv_size", "intermediate_size", "r", mode="before")
    @classmethod
    def _integer_within_limits(cls, value: Any, info: ValidationInfo) -> Any:
        # No lax coercion from a file: true/false, 12.0 and "12" are not sizes.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {type(value).__name__}")
        limits = {"r": MAX_RANK, "num_hidden_layers": MAX_LAYERS}
        limit = limits.get(info.field_name, MAX_DIM)
        if value > limit:
            shown = value if value.bit_length() <= 128 else f"a {value.bit_length()}-bit integer"
            raise ValueError(f"{shown} is larger than the sanity limit {limit}")
        return value

    @field_validator("targets")
    @classmethod
    def _canonical_targets(cls, targets: tuple[str, ...]) -> tuple[str, ...]:
        if not targets:
            raise ValueError(f"targets must name at least one of {list(TARGET_ORDER)}")
        if len(set(targets)) != len(targets):
            raise ValueError(f"targets has duplicates: {list(targets)}")
        return tuple(t for t in TARGET_ORDER if t in targets)

    @property
    def shape(self) -> ModelShape:
        return ModelShape(**{k: getattr(self, k) for k in ModelShape.model_fields})

    def split_sizes(self) -> dict[str, int]:
        """Size of each target's vector, in split order."""
        return {t: self.target_size(t) for t in self.targets}

    @property
    def vector_size(self) -> int:
        """Length of the VG output `l` (sum of the target sizes)."""
        return sum(self.split_sizes().values())

    def check_matches(self, shape: ModelShape, where: str = "adapter") -> None:
        """Raise if this adapter was built for a model with other shapes."""
        wrong = [
            f"{name}={getattr(self, name)} (base model has {getattr(shape, name)})"
            for name in ModelShape.model_fields
            if getattr(self, name) != getattr(shape, name)
        ]
        if wrong:
            raise PARAConfigError(
                f"{where}: PARA adapter for base model {clip(repr(self.base_model_name_or_path))} does not "
                f"fit this base model: {', '.join(wrong)}. Train or convert the adapter for this "
                "base model."
            )

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "PARAConfig":
        return cls.from_bytes(read_config_bytes(directory), Path(directory) / CONFIG_FILE)

    @classmethod
    def from_bytes(cls, data: bytes, path: str | Path) -> "PARAConfig":
        """Parse and validate a config's bytes (`path` only names it in messages)."""
        if len(data) > MAX_CONFIG_BYTES:
            raise PARAConfigError(
                f"{path}: too large (over {MAX_CONFIG_BYTES} bytes); a PARA config is a few hundred bytes."
            )
        try:
            raw = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise PARAConfigError(f"{path}: not valid JSON (not UTF-8 text: {clip(exc)})") from exc
        except RecursionError as exc:
            raise PARAConfigError(f"{path}: not valid JSON (nested too deeply)") from exc
        except ValueError as exc:  # JSONDecodeError, and ints over Python's digit limit
            raise PARAConfigError(f"{path}: not valid JSON ({clip(exc)})") from exc
        try:
            json.dumps(raw, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:  # "\ud800" escapes decode to lone surrogates
            raise PARAConfigError(
                f"{path}: not valid JSON (a string holds a lone UTF-16 surrogate: {clip(exc)})"
            ) from exc
        except RecursionError as exc:
            raise PARAConfigError(f"{path}: not valid JSON (nested too deeply)") from exc
        if not isinstance(raw, dict):
            raise PARAConfigError(
                f"{path}: invalid PARA config: must be a JSON object, got a JSON {_json_kind(raw)}."
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            errors = exc.errors(include_input=False, include_url=False)
            problems = "; ".join(
                f"{clip('.'.join(str(p) for p in err['loc']), 80) or '<root>'}: {clip(err['msg'])}"
                for err in errors[:10]
            )
            if len(errors) > 10:
                problems += f"; ... ({len(errors) - 10} more)"
            raise PARAConfigError(f"{path}: invalid PARA config: {problems}") from exc
        except RecursionError as exc:
            raise PARAConfigError(f"{path}: invalid PARA config: nested too deeply") from exc


def read_config_bytes(directory: str | Path) -> bytes:
    """`para_config.json`'s bytes, read once (`read_adapter_bytes`)."""
    path = Path(directory) / CONFIG_FILE
    try:
        return read_adapter_bytes(directory, CONFIG_FILE, MAX_CONFIG_BYTES,
                                  missing=f" A PARA adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}.")
    except PARAConfigError as exc:
        if "too large" in str(exc):
            raise PARAConfigError(
                f"{path}: too large (over {MAX_CONFIG_BYTES} bytes); a PARA config is a few hundred bytes."
            ) from None
        raise


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else type(value).__name__
