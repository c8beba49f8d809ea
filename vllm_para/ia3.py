"""PEFT (IA)^3 adapters as PARA adapters: exact, pure conversion and a loader.

An (IA)^3 adapter multiplies some projections' outputs (or a feed-forward
module's input) by constant learned vectors. A PARA adapter whose VG has
W_up = 0 emits exactly b_up for every prompt (`l = gelu(p W_down^T) W_up^T +
b_up = b_up`), so an (IA)^3 adapter is exactly a PARA adapter with r = 1,
W_down = 0, W_up = 0 and b_up = the (IA)^3 vectors. PARA scales the outputs of
q, k, v (before rotary, bias included) and of gate and up (before the
activation), which is what (IA)^3 scales on Llama-style decoders:

=================  ===============================  ==========================
PEFT module        how PEFT scales it               PARA target
=================  ===============================  ==========================
q_proj/k_proj/     output (not feed-forward)        q / k / v
v_proj
gate_proj          output (not feed-forward)        g
up_proj            output (not feed-forward)        u
down_proj          input (feed-forward)             u: down(act(g) * u * l)
                                                    = down(act(g) * (u * l))
up_proj + down_pr  both of the above                u = l_up * l_down
=================  ===============================  ==========================

Everything else is refused at load, naming the module and the reason: o_proj
(its output is the residual update, its input the attention output: neither is
a PARA target), down_proj as an output module, q/k/v/gate/up as feed-forward
(input) modules (an input scaling of a projection is not an output scaling),
lm_head and any other module.

Which modules an adapter targets is decided exactly as PEFT decides it
(`peft.tuners.tuners_utils.check_target_module_exists` and
`IA3Model._check_target_module_feedforward`, peft 0.21): a string is a regex
`re.fullmatch`-ed against the module name (`model.layers.3.self_attn.k_proj`),
a list matches a name exactly or as a `.`-suffix; `exclude_modules` and
`layers_to_transform` / `layers_pattern` the same way. The tensors saved by
`save_pretrained` must be exactly those modules' vectors:
`base_model.model.<module>.ia3_l`, shape [out, 1] (output scaling) or [1, in]
(feed-forward input scaling), float32/float16/bfloat16, finite. Layers (or
targets) an adapter does not scale get vectors of ones.

`ia3_to_para` is pure (a config dict and tensors in, a PARAAdapter out);
`vllm_para.adapter.load_ia3_adapter` reads a directory through the shared reader
(`adapter.read_adapter_files`: each file opened once, O_NOFOLLOW | O_NONBLOCK, with a
deadline; safetensors only, pickle `.bin`/`.pt` files are never opened); serving reads
the bytes in the API server and `parse_ia3_bytes` converts them in every worker.

Runs in: the API server (reads and converts the files) and every worker (converts the bytes it is sent).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError

from .para_format import ALLOWED_DTYPES, PARAAdapter, PARAAdapterError
from .config import (
    CONFIG_FILE,
    MAX_CONFIG_BYTES,
    MAX_NAME_CHARS,
    TARGET_ORDER,
    WEIGHTS_FILE,
    ModelShape,
    PARAConfig,
    clip,
    read_adapter_bytes,
)
from .core import VGWeights

IA3_CONFIG = "adapter_config.json"
IA3_WEIGHTS = WEIGHTS_FILE  # "adapter_model.safetensors", as PEFT names it
KIND = "ia3"
# An (IA)^3 file holds L * (a few vectors of the model's widths): a few MB for a
# 70B model. Anything far larger is not an (IA)^3 adapter; refuse before reading it.
MAX_IA3_WEIGHTS_BYTES = 256 * 1024 * 1024
# A target/feed-forward regex longer than this is not a module pattern.
MAX_PATTERN_CHARS = 1024
# PEFT's key prefix in adapter_model.safetensors (adapter name removed), and the
# name of the parameter of an IA3 layer.
KEY_PREFIX = "base_model.model."
KEY_SUFFIX = ".ia3_l"
TASK_TYPES = (None, "CAUSAL_LM")

# The linear modules of a Llama-style decoder (Llama, Mistral, Gemma 1-3, Qwen2/3),
# as PEFT sees them in `AutoModelForCausalLM.named_modules()`. PEFT can only put
# (IA)^3 on linear layers, so these are all the modules a saved adapter can target.
ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
OTHER_LINEAR = ("lm_head",)
# module -> PARA target, by how PEFT scales it
OUTPUT_TARGET = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "gate_proj": "g", "up_proj": "u"}
FEEDFORWARD_TARGET = {"down_proj": "u"}

RefusalReason = str
REFUSALS_OUTPUT: dict[str, RefusalReason] = {
    "o_proj": "scales the attention output projection's output (the residual update), which is not a "
    "PARA target",
    "down_proj": "listed as a non-feed-forward module, so PEFT scales down_proj's output (the residual "
    "update), which is not a PARA target; (IA)^3 puts down_proj in feedforward_modules (input scaling "
    "= scaling up_proj's output)",
    "lm_head": "scales the logits, which is not a PARA target",
}
REFUSALS_FEEDFORWARD: dict[str, RefusalReason] = {
    "o_proj": "scales the attention output projection's input, which is not a PARA target",
    "q_proj": "listed in feedforward_modules, so PEFT scales q_proj's input (the normalised hidden "
    "state), which is not expressible as an output scaling; remove it from feedforward_modules",
    "k_proj": "listed in feedforward_modules, so PEFT scales k_proj's input (the normalised hidden "
    "state), which is not expressible as an output scaling; remove it from feedforward_modules",
    "v_proj": "listed in feedforward_modules, so PEFT scales v_proj's input (the normalised hidden "
    "state), which is not expressible as an output scaling; remove it from feedforward_modules",
    "gate_proj": "listed in feedforward_modules, so PEFT scales gate_proj's input (the normalised "
    "hidden state), which is not expressible as an output scaling; remove it from feedforward_modules",
    "up_proj": "listed in feedforward_modules, so PEFT scales up_proj's input (the normalised hidden "
    "state), which is not expressible as an output scaling; remove it from feedforward_modules",
    "lm_head": "scales the final hidden state entering lm_head, which is not a PARA target",
}

Patterns = list[StrictStr] | StrictStr | None


class IA3FileConfig(BaseModel):
    """The fields of PEFT's `adapter_config.json` (peft_type "IA3") this loader
    uses, with strict types. PEFT writes many more (peft_version, revision,
    inference_mode, init_ia3_weights, ...): they are allowed and ignored."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    peft_type: Literal["IA3"]
    target_modules: Patterns = None
    feedforward_modules: Patterns = None
    exclude_modules: Patterns = None
    fan_in_fan_out: StrictBool = False
    modules_to_save: list[StrictStr] | None = None
    layers_to_transform: list[StrictInt] | StrictInt | None = None
    layers_pattern: Patterns = None
    base_model_name_or_path: StrictStr | None = None
    task_type: StrictStr | None = None


@dataclass
class IA3Adapter:
    """A converted (IA)^3 adapter: `adapter` is an ordinary PARAAdapter (r=1,
    pooling "last", W_down = W_up = 0, b_up = the vectors) that every PARA
    code path serves as is; `kind` is "ia3" for metadata (/v1/models, metrics);
    `modules` maps each PEFT module the adapter scales to its PARA target."""

    adapter: PARAAdapter
    modules: dict[str, str] = field(default_factory=dict)
    kind: Literal["ia3"] = KIND

    @property
    def config(self) -> PARAConfig:
        return self.adapter.config

    @property
    def weights(self) -> VGWeights:
        return self.adapter.weights


# ----------------------------------------------------------- PEFT's matching
def _compile(pattern: str, field_name: str, where: str) -> re.Pattern[str]:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PARAAdapterError(f"{where}: {field_name} is a {len(pattern)}-character regex; over {MAX_PATTERN_CHARS}.")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise PARAAdapterError(f"{where}: {field_name} {clip(repr(pattern))} is not a valid regex ({exc}).") from exc


def _matches_list(names: list[str], key: str) -> bool:
    return key in names or any(key.endswith(f".{n}") for n in names)


def _layer_index(key: str, layers_pattern: str | list[str] | None) -> int | None:
    """The layer index PEFT reads from a module name for `layers_to_transform`."""
    if layers_pattern is None or len(layers_pattern) == 0:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        match = None
        for pattern in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    return None if match is None else int(match.group("idx"))


class _Matcher:
    """`check_target_module_exists` and `_check_target_module_feedforward` of peft 0.21."""

    def __init__(self, config: IA3FileConfig, where: str):
        self.config = config
        self.target = (
            _compile(config.target_modules, "target_modules", where) if isinstance(config.target_modules, str) else None
        )
        self.exclude = (
            _compile(config.exclude_modules, "exclude_modules", where)
            if isinstance(config.exclude_modules, str) else None
        )
        self.feedforward = (
            _compile(config.feedforward_modules, "feedforward_modules", where)
            if isinstance(config.feedforward_modules, str)
            else None
        )
        if isinstance(config.layers_pattern, str):
            _compile(config.layers_pattern, "layers_pattern", where)
        elif config.layers_pattern:
            for p in config.layers_pattern:
                _compile(p, "layers_pattern", where)

    def targeted(self, key: str) -> bool:
        c = self.config
        if c.exclude_modules:
            if self.exclude is not None:
                if self.exclude.fullmatch(key):
                    return False
            elif _matches_list(c.exclude_modules, key):
                return False
        if self.target is not None:
            return self.target.fullmatch(key) is not None
        assert isinstance(c.target_modules, list)
        if key in c.target_modules:
            return True
        found = any(key.endswith(f".{t}") for t in c.target_modules)
        indexes = c.layers_to_transform
        using_indexes = indexes is not None and (len(indexes) != 0 if isinstance(indexes, list) else True)
        if using_indexes and found:
            idx = _layer_index(key, c.layers_pattern)
            if idx is None:
                return False
            return idx == indexes if isinstance(indexes, int) else idx in indexes
        return found

    def is_feedforward(self, key: str) -> bool:
        if self.feedforward is not None:
            return self.feedforward.fullmatch(key) is not None
        return any(key.endswith(f) for f in self.config.feedforward_modules or [])


def module_names(num_layers: int) -> list[str]:
    """Names of every linear module of a Llama-style causal LM, in PEFT's spelling."""
    names = []
    for i in range(num_layers):
        names += [f"model.layers.{i}.self_attn.{m}" for m in ATTN_MODULES]
        names += [f"model.layers.{i}.mlp.{m}" for m in MLP_MODULES]
    return names + list(OTHER_LINEAR)


def tensor_key(module: str) -> str:
    """The key of a module's vector in PEFT's adapter_model.safetensors."""
    return f"{KEY_PREFIX}{module}{KEY_SUFFIX}"


# -------------------------------------------------------------- conversion
def parse_ia3_config(config_raw: Any, where: str = "adapter") -> IA3FileConfig:
    """Validate the raw JSON of an adapter_config.json as an (IA)^3 config."""
    path = f"{where}/{IA3_CONFIG}"
    if not isinstance(config_raw, dict):
        raise PARAAdapterError(f"{path}: must be a JSON object, got {type(config_raw).__name__}.")
    peft_type = config_raw.get("peft_type")
    if peft_type != "IA3":
        hint = " Serve LoRA adapters with vLLM's own --enable-lora." if peft_type == "LORA" else ""
        raise PARAAdapterError(
            f"{path}: peft_type is {clip(repr(peft_type))}, not 'IA3': this loader reads PEFT (IA)^3 "
            f"adapters (and PARA adapters have {CONFIG_FILE}).{hint}"
        )
    try:
        config = IA3FileConfig.model_validate(config_raw)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        problems = "; ".join(
            f"{clip('.'.join(str(p) for p in e['loc']), 80) or '<root>'}: {clip(e['msg'])}" for e in errors[:10]
        )
        raise PARAAdapterError(f"{path}: invalid (IA)^3 config: {problems}") from exc
    if config.base_model_name_or_path is not None and len(config.base_model_name_or_path) > MAX_NAME_CHARS:
        raise PARAAdapterError(f"{path}: base_model_name_or_path is longer than {MAX_NAME_CHARS} characters.")
    if config.task_type not in TASK_TYPES:
        raise PARAAdapterError(
            f"{path}: task_type {clip(repr(config.task_type))}: vllm-para serves causal-LM adapters "
            "(task_type 'CAUSAL_LM')."
        )
    if config.fan_in_fan_out:
        raise PARAAdapterError(
            f"{path}: fan_in_fan_out is true (Conv1D weights, GPT-2 style); vllm-para serves Llama-style "
            "models whose projections are nn.Linear. Save the adapter with fan_in_fan_out=false."
        )
    if config.modules_to_save:
        raise PARAAdapterError(
            f"{path}: modules_to_save={clip(config.modules_to_save)}: the adapter replaces whole modules, "
            "which vllm-para cannot serve per request. Train without modules_to_save."
        )
    for name in ("target_modules", "feedforward_modules"):
        if getattr(config, name) is None:
            raise PARAAdapterError(
                f"{path}: {name} is null. PEFT fills it from the model type when it creates the adapter, "
                f"so a saved adapter lists it; write the module names (e.g. {name}: "
                f"{['k_proj', 'v_proj', 'down_proj'] if name == 'target_modules' else ['down_proj']})."
            )
    if isinstance(config.target_modules, str) and config.target_modules.lower() == "all-linear":
        raise PARAAdapterError(
            f"{path}: target_modules 'all-linear' includes o_proj and down_proj outputs, whose scaling "
            "vllm-para cannot express. List the modules (e.g. ['k_proj', 'v_proj', 'down_proj'])."
        )
    return config


def plan_modules(config: IA3FileConfig, num_layers: int, where: str = "adapter") -> dict[str, tuple[str, bool]]:
    """{PEFT module: (PARA target, feed-forward)} for every module the adapter
    scales, decided as PEFT decides it; refuses a module PARA cannot express."""
    cfg_path = f"{where}/{IA3_CONFIG}"
    matcher = _Matcher(config, cfg_path)
    plan: dict[str, tuple[str, bool]] = {}
    for module in module_names(num_layers):
        if not matcher.targeted(module):
            continue
        short = module.rsplit(".", 1)[-1]
        ff = matcher.is_feedforward(module)
        target = (FEEDFORWARD_TARGET if ff else OUTPUT_TARGET).get(short)
        if target is None:
            reason = (REFUSALS_FEEDFORWARD if ff else REFUSALS_OUTPUT).get(short, "is not a PARA target")
            raise PARAAdapterError(
                f"{cfg_path}: module {module!r} ({short}, {'feed-forward: input' if ff else 'output'} scaling) "
                f"{reason}. vllm-para serves (IA)^3 on q/k/v/gate/up outputs and on down_proj as a "
                "feed-forward module; retrain without it."
            )
        plan[module] = (target, ff)
    if not plan:
        raise PARAAdapterError(
            f"{cfg_path}: target_modules {clip(config.target_modules)} match no module of this base model "
            f"(modules are named like 'model.layers.0.self_attn.k_proj'); PEFT would refuse it too."
        )
    return plan


def ia3_to_para(
    config_raw: dict,
    tensors: dict[str, torch.Tensor],
    base_shape: ModelShape,
    num_layers: int | None = None,
    where: str = "adapter",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> IA3Adapter:
    """Convert a PEFT (IA)^3 adapter (the parsed JSON of its adapter_config.json
    and the tensors of its adapter_model.safetensors) into an exactly equivalent
    PARA adapter for a base model of shape `base_shape`. Pure: no file access.

    `num_layers` defaults to `base_shape.num_hidden_layers` (and must equal it);
    `where` (the adapter directory) prefixes every error message. Raises
    PARAAdapterError naming the file, module or tensor and the fix.
    """
    L = base_shape.num_hidden_layers if num_layers is None else num_layers
    if L != base_shape.num_hidden_layers:
        raise ValueError(f"num_layers={L} but the base model has {base_shape.num_hidden_layers} layers")
    config = parse_ia3_config(config_raw, where)
    plan = plan_modules(config, L, where)
    w_path = f"{where}/{IA3_WEIGHTS}"

    # Exactly the planned modules' vectors, each of the right shape, dtype and values.
    expected = {tensor_key(m): m for m in plan}
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise PARAAdapterError(
            f"{w_path}: missing tensor {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; {IA3_CONFIG} targets module {expected[missing[0]]!r}. Save the adapter with PEFT's "
            "save_pretrained."
        )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise PARAAdapterError(
            f"{w_path}: unexpected tensor {clip(repr(unexpected[0]))}"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
            + f"; {IA3_CONFIG}'s target_modules/feedforward_modules do not account for it."
        )
    vectors: dict[tuple[int, str], torch.Tensor] = {}
    for key, module in expected.items():
        target, ff = plan[module]
        t = tensors[key]
        size = base_shape.target_size(target)
        shape = (1, size) if ff else (size, 1)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise PARAAdapterError(
                f"{w_path}: tensor {key!r} has shape {got}, expected {list(shape)} "
                f"({'input' if ff else 'output'} scaling of {module.rsplit('.', 1)[-1]} in this base model)."
            )
        if t.dtype not in ALLOWED_DTYPES:
            raise PARAAdapterError(
                f"{w_path}: tensor {key!r} has dtype {t.dtype}, expected one of {[str(d) for d in ALLOWED_DTYPES]}."
            )
        if not torch.isfinite(t).all():
            raise PARAAdapterError(f"{w_path}: tensor {key!r} contains NaN or Inf values.")
        layer = int(module.split(".")[2])
        v = t.detach().reshape(size).to(device="cpu", dtype=torch.float32)
        # up_proj (output) and down_proj (feed-forward) both scale up's output: multiply.
        vectors[layer, target] = vectors[layer, target] * v if (layer, target) in vectors else v

    # The PARA adapter: r = 1, W_down = W_up = 0, b_up = the vectors (ones elsewhere).
    targets = tuple(t for t in TARGET_ORDER if any(tt == t for tt, _ in plan.values()))
    para = PARAConfig(
        base_model_name_or_path=config.base_model_name_or_path or "",
        r=1,
        targets=targets,
        pooling="last",
        **base_shape.model_dump(),
    )
    bias = torch.cat(
        [
            torch.stack([vectors.get((i, t), torch.ones(base_shape.target_size(t))) for i in range(L)])
            for t in para.targets
        ],
        dim=1,
    )
    weights = VGWeights(
        down=torch.zeros(L, 1, base_shape.hidden_size), up=torch.zeros(L, para.vector_size, 1), up_bias=bias
    ).to(device=device, dtype=dtype)
    return IA3Adapter(PARAAdapter(para, weights), modules={m: t for m, (t, _) in plan.items()})


# ------------------------------------------------------------------ files
def _read_file(directory: Path, name: str, limit: int, missing: str = "") -> bytes:
    """The bytes of the regular file `name` in an adapter directory, at most `limit`, read once
    through the shared safe reader (`config.read_adapter_bytes`: O_NOFOLLOW | O_NONBLOCK, checks
    on the open descriptor; symlinks out of the directory and non-regular files are refused)."""
    return read_adapter_bytes(directory, name, limit, error=PARAAdapterError, missing=missing)


def parse_json(data: bytes, path: str) -> Any:
    try:
        raw = json.loads(data.decode("utf-8"))
        json.dumps(raw, ensure_ascii=False).encode("utf-8")  # lone surrogates
        return raw
    except (ValueError, RecursionError, UnicodeError) as exc:
        raise PARAAdapterError(f"{path}: not valid JSON ({clip(exc)}).") from exc


def _parse_safetensors(data: bytes, path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(data)
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError, OverflowError, MemoryError) as exc:
        raise PARAAdapterError(f"{path}: not a valid safetensors file ({clip(exc)}).") from exc


def parse_ia3_bytes(
    config_bytes: bytes,
    weights_bytes: bytes,
    base_shape: ModelShape,
    where: str = "adapter",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> IA3Adapter:
    """`adapter.load_ia3_adapter` from the two files' bytes (no file access): what a
    worker runs on the bytes the API server read. `where` is the directory."""
    raw = parse_json(config_bytes, f"{where}/{IA3_CONFIG}")
    # refuse a bad config, or a module PARA cannot express, before parsing the weights
    plan_modules(parse_ia3_config(raw, where), base_shape.num_hidden_layers, where)
    tensors = _parse_safetensors(weights_bytes, f"{where}/{IA3_WEIGHTS}")
    return ia3_to_para(raw, tensors, base_shape, where=where, dtype=dtype, device=device)


def _peft_type(directory: Path) -> Any:
    path = directory / IA3_CONFIG
    if not path.is_file():
        return None
    raw = parse_json(_read_file(directory, IA3_CONFIG, MAX_CONFIG_BYTES), str(path))
    return raw.get("peft_type") if isinstance(raw, dict) else None


def is_peft_config(directory: str | Path) -> bool:
    """True when `directory/adapter_config.json` names a PEFT adapter type (any; "PARA" is not
    one: a PARA config saved under PEFT's file name is reported as a missing para_config.json).
    Never raises."""
    try:
        peft_type = _peft_type(Path(directory))
    except (PARAAdapterError, OSError, ValueError, RuntimeError):
        return True  # unreadable: let the (IA)^3 loader say why
    return isinstance(peft_type, str) and peft_type != "PARA"


def is_ia3_dir(directory: str | Path) -> bool:
    """True when `directory` holds a PEFT adapter_config.json with peft_type "IA3".
    Never raises: anything unreadable is simply not an (IA)^3 directory."""
    try:
        return _peft_type(Path(directory)) == "IA3"
    except (PARAAdapterError, OSError, ValueError, RuntimeError):
        return False


def adapter_kind(directory: str | Path) -> Literal["para", "ia3"]:
    """Which loader an adapter directory needs: "para" (para_config.json) or
    "ia3" (PEFT adapter_config.json, peft_type "IA3"). A directory with neither
    is "para" (its loader reports what is missing); one with both, or with
    another PEFT type, is refused."""
    directory = Path(directory)
    try:
        has_para = (directory / CONFIG_FILE).exists() or (directory / CONFIG_FILE).is_symlink()
        peft_type = _peft_type(directory) if (directory / IA3_CONFIG).exists() else None
    except OSError:
        return "para"
    if peft_type is None:
        return "para"
    if has_para:
        raise PARAAdapterError(
            f"{directory}: holds both {CONFIG_FILE} (PARA) and {IA3_CONFIG} (PEFT {clip(repr(peft_type))}); "
            "keep one adapter per directory."
        )
    if peft_type != "IA3":
        hint = " Serve LoRA adapters with vLLM's own --enable-lora." if peft_type == "LORA" else ""
        raise PARAAdapterError(
            f"{directory / IA3_CONFIG}: peft_type {clip(repr(peft_type))}: vllm-para serves PARA and PEFT "
            f"(IA)^3 adapters only.{hint}"
        )
    return KIND


__all__ = [
    "IA3_CONFIG",
    "IA3Adapter",
    "IA3FileConfig",
    "adapter_kind",
    "ia3_to_para",
    "is_ia3_dir",
    "parse_ia3_bytes",
    "parse_ia3_config",
    "plan_modules",
]
