"""The PARA adapter config (`para_config.json`): a typed, validated contract.

The config names the base model it was trained for and that model's shapes, so a
loader can refuse an adapter built for another base model before touching any
weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

CONFIG_FILE = "para_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# The fixed order in which the generated vector `l` is split. Never reorder:
# adapter files on disk depend on it.
TARGET_ORDER: tuple[str, ...] = ("q", "k", "v", "g", "u")
Target = Literal["q", "k", "v", "g", "u"]
DEFAULT_TARGETS: tuple[str, ...] = ("q", "v", "u")


class PARAConfigError(ValueError):
    """An adapter config is missing, malformed or does not fit the base model."""


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
    base_model_name_or_path: str
    r: int = Field(default=12, ge=1, le=4096, description="VG bottleneck size")
    targets: tuple[Target, ...] = DEFAULT_TARGETS
    pooling: Literal["last", "mean"] = "last"
    activation: Literal["gelu"] = "gelu"

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
                f"{where}: PARA adapter for base model {self.base_model_name_or_path!r} does not "
                f"fit this base model: {', '.join(wrong)}. Train or convert the adapter for this "
                "base model."
            )

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "PARAConfig":
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise PARAConfigError(
                f"{path}: missing. A PARA adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}."
            )
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PARAConfigError(f"{path}: not valid JSON ({exc})") from exc
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                for err in exc.errors()
            )
            raise PARAConfigError(f"{path}: invalid PARA config: {problems}") from exc
