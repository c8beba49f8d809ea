"""Engine set-up and request admission for PARA (the frontend process).

- `prepare_engine_args` / `check_engine_config` wrap `EngineArgs.create_engine_config`:
  they configure vLLM so every PARA prompt is prefilled in one step, refuse
  feature combinations PARA cannot honour, and validate every registered
  adapter before any engine process starts.
- `admit_request` runs in `InputProcessor.process_inputs`: an unknown adapter
  name fails that request alone, with the list of available adapters; known
  ones get their prefix-cache key.
"""

from __future__ import annotations

import logging
import os

from ..config import ModelShape
from .adapter_slots import AdapterRegistry
from .prefix_cache import REQUEST_CACHE_KEY
from .settings import REQUEST_ADAPTER_KEY, REQUEST_POOL_LEN_KEY, REQUEST_VERSION_KEY, PARASettings, PARASettingsError

logger = logging.getLogger("vllm.para")  # under vLLM's logger: same handlers and level

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "GemmaForCausalLM")

_registry: AdapterRegistry | None = None  # this process's view of the loaded adapters


def frontend_registry() -> AdapterRegistry | None:
    return _registry


def settings_of(config_or_args) -> PARASettings | None:
    return PARASettings.from_additional_config(getattr(config_or_args, "additional_config", None))


def prepare_engine_args(args, settings: PARASettings) -> None:
    """Adjust EngineArgs before vLLM builds its config."""
    if getattr(args, "enable_lora", False):
        raise PARASettingsError(
            "PARA and LoRA cannot be enabled together in one engine (--enable-lora with --enable-para); "
            "serve them from separate engines."
        )
    if getattr(args, "speculative_config", None):
        raise PARASettingsError(
            "speculative decoding is not supported with PARA: the draft model would not apply the "
            "adapters' vectors. Remove --speculative-config."
        )
    if getattr(args, "enable_chunked_prefill", None):
        logger.warning("PARA: disabling chunked prefill (a PARA prompt must be prefilled in one step).")
    args.enable_chunked_prefill = False
    if os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "0") not in ("0", ""):
        raise PARASettingsError("PARA needs vLLM's V1 model runner; unset VLLM_USE_V2_MODEL_RUNNER.")
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"  # inherited by the engine and worker processes
    from .worker_extension import EXTENSION_QUALNAME

    current = getattr(args, "worker_extension_cls", "")
    if current and current != EXTENSION_QUALNAME:
        raise PARASettingsError(
            f"PARA installs its own worker extension; --worker-extension-cls {current!r} cannot be combined with it."
        )
    args.worker_extension_cls = EXTENSION_QUALNAME


def check_engine_config(vllm_config, settings: PARASettings) -> None:
    """Validate the built config and every registered adapter; fail before start-up."""
    global _registry
    archs = list(vllm_config.model_config.architectures or [])
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise PARASettingsError(
            f"PARA does not support architecture {archs}; supported: {list(SUPPORTED_ARCHITECTURES)}."
        )
    sched = vllm_config.scheduler_config
    if sched.enable_chunked_prefill:
        raise PARASettingsError("PARA requires chunked prefill off (--no-enable-chunked-prefill).")
    _keep_vg_out_of_cuda_graphs(vllm_config)
    shape = ModelShape.from_hf_config(vllm_config.model_config.hf_config)
    registry = AdapterRegistry(shape)
    for name, path in settings.modules.items():
        try:
            entry = registry.add(name, path)
        except Exception as exc:
            raise PARASettingsError(f"PARA adapter {name!r} ({path}) cannot be loaded: {exc}") from exc
        if entry.config.r > settings.max_rank:
            raise PARASettingsError(
                f"PARA adapter {name!r} has r={entry.config.r} > max_rank={settings.max_rank}; "
                "raise para.max_rank (--max-para-rank)."
            )
    _registry = registry
    logger.info("PARA: %d adapters validated: %s", len(registry.names()), registry.names())


def _keep_vg_out_of_cuda_graphs(vllm_config) -> None:
    """On GPU, run the VG op between CUDA-graph pieces (like attention), so its
    host-side plan is read at every replay. Decode-only batches captured as full
    graphs contain no prompt step, so the op's no-op path is the right one there."""
    from vllm.platforms import current_platform

    from .ops import OP_NAME

    splitting_ops = vllm_config.compilation_config.splitting_ops
    if current_platform.is_cuda_alike() and splitting_ops is not None and OP_NAME not in splitting_ops:
        splitting_ops.append(OP_NAME)


def admit_request(vllm_config, request_id: str, params):
    """Check a request's adapter; return the params to use (cloned if changed)."""
    from vllm.exceptions import VLLMNotFoundError, VLLMValidationError
    from vllm.sampling_params import SamplingParams

    if not isinstance(params, SamplingParams) or not params.extra_args:
        return params
    name = params.extra_args.get(REQUEST_ADAPTER_KEY)
    if name is None:
        return params
    if settings_of(vllm_config) is None:
        raise VLLMValidationError(
            f"request selects PARA adapter {name!r} but PARA is not enabled on this engine "
            "(start it with --enable-para or additional_config={'para': {...}}).",
            parameter=REQUEST_ADAPTER_KEY,
        )
    registry = _registry
    if registry is None or name not in registry:
        available = registry.names() if registry is not None else []
        raise VLLMNotFoundError(f"PARA adapter {name!r} is not loaded. Available adapters: {available}.")
    entry = registry.get(name)
    params = params.clone()
    params.extra_args = {
        **params.extra_args,
        REQUEST_VERSION_KEY: entry.version,
        REQUEST_CACHE_KEY: f"{name}@{entry.version}:{entry.path}",
    }
    if entry.config.pooling == "mean" or REQUEST_POOL_LEN_KEY in params.extra_args:
        # Pooling needs every pooled token computed in this request's own prefill.
        params.skip_reading_prefix_cache = True
    return params
