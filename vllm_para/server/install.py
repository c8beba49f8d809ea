"""Install the server-side hooks (called from the plugin's `register()`)."""

from __future__ import annotations

import functools

from vllm_para.engine.frontend.admission import settings_of

from ..patching import wrap_attribute
from .beam_search import wrap_beam_search
from .cli_args import install_cli_hooks
from .generate_hook import wrap_generate
from .metrics import RefreshOnScrape, WorkerStatsRefresher
from .openai_models import (
    wrap_check_model,
    wrap_maybe_get_adapters,
    wrap_model_name,
    wrap_show_available_models,
)
from .routes import router, runtime_updating_enabled

PATCHES = (
    "vllm.engine.arg_utils.EngineArgs.add_cli_args",
    "vllm.engine.arg_utils.EngineArgs.from_cli_args",
    "vllm.entrypoints.serve.engine.serving.BaseServing._check_model",
    "vllm.entrypoints.serve.engine.serving.BaseServing._maybe_get_adapters",
    "vllm.entrypoints.openai.models.serving.OpenAIServingModels.model_name",
    "vllm.entrypoints.openai.models.serving.OpenAIServingModels.show_available_models",
    "vllm.entrypoints.launchers.app.attach_endpoint_plugins",
    "vllm.entrypoints.launchers.api_server.app_state.init_endpoint_plugins_state",
    "vllm.v1.engine.async_llm.AsyncLLM.generate",
    "vllm.entrypoints.generate.beam_search.online.BeamSearchOnlineMixin.beam_search",
)


def _para_enabled(args) -> bool:
    return getattr(args, "enable_para", False) or settings_of(args) is not None


def _wrap_attach(original):
    @functools.wraps(original)
    def attach_endpoint_plugins(app, *args, **kwargs):
        result = original(app, *args, **kwargs)
        if _para_enabled(app.state.args):
            app.add_middleware(RefreshOnScrape)  # worker gauges read when /metrics is scraped
            if runtime_updating_enabled():
                app.include_router(router)
        return result

    return attach_endpoint_plugins


def _wrap_init_state(original):
    @functools.wraps(original)
    async def init_endpoint_plugins_state(engine_client, state, args, *rest, **kwargs):
        result = await original(engine_client, state, args, *rest, **kwargs)
        if _para_enabled(args) and engine_client is not None:
            state.para_stats_refresher = WorkerStatsRefresher(engine_client)
        return result

    return init_endpoint_plugins_state


def install_server_hooks() -> None:
    from vllm.entrypoints.generate.beam_search.online import BeamSearchOnlineMixin
    from vllm.entrypoints.launchers import app as app_module
    from vllm.entrypoints.launchers.api_server import app_state
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels
    from vllm.entrypoints.serve.engine.serving import BaseServing
    from vllm.v1.engine.async_llm import AsyncLLM

    install_cli_hooks()
    wrap_attribute(BaseServing, "_check_model", wrap_check_model)
    wrap_attribute(BaseServing, "_maybe_get_adapters", wrap_maybe_get_adapters)
    wrap_attribute(OpenAIServingModels, "model_name", wrap_model_name)
    wrap_attribute(OpenAIServingModels, "show_available_models", wrap_show_available_models)
    wrap_attribute(app_module, "attach_endpoint_plugins", _wrap_attach)
    wrap_attribute(app_state, "init_endpoint_plugins_state", _wrap_init_state)
    wrap_attribute(AsyncLLM, "generate", wrap_generate)
    wrap_attribute(BeamSearchOnlineMixin, "beam_search", wrap_beam_search)
