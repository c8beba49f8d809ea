"""Every vLLM attribute vllm-para wraps at run time: one table, one install loop.

Each `Hook` names the vLLM attribute (module + attribute path), the wrapper factory
(`module:function`, called with the original and returning the wrapper, which calls
the original), the process where the hook does its work, whether the attribute is
private to vLLM (a leading underscore: no stability promise, so tests/test_vllm_hooks.py
checks its signature and the source lines PARA relies on), and why it is wrapped.
Wrapping is `patching.wrap_attribute`: idempotent, and a missing attribute fails loudly.
Without `additional_config["para"]` (or `--enable-para`) every wrapper passes through.

Runs in: every process vLLM starts (the plugin's `register()` calls `install_hooks`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

API, CORE, WORKER = "api server", "engine core", "worker"


@dataclass(frozen=True)
class Hook:
    module: str  # vLLM module holding the attribute
    attr: str  # "function" or "Class.method"
    wrapper: str  # "vllm_para.module:factory"
    process: str  # where the wrapper does its work: API, CORE or WORKER
    purpose: str
    kind: str | None = None  # "staticmethod" / "classmethod" for such class attributes
    only_if_own: bool = False  # wrap only where the class defines the attribute itself (skip if absent)

    @property
    def target(self) -> str:
        return f"{self.module}.{self.attr}"

    @property
    def private(self) -> bool:
        return self.attr.rsplit(".", 1)[-1].startswith("_")


_RUNNER = "vllm.v1.worker.gpu_model_runner"
_SERVING = "vllm.entrypoints.serve.engine.serving"
_MODELS = "vllm.entrypoints.openai.models.serving"

HOOKS: tuple[Hook, ...] = (
    # engine configuration and admission (the API server, or the offline LLM's process)
    Hook("vllm.engine.arg_utils", "EngineArgs.create_engine_config", "vllm_para.plugin:_wrap_create_engine_config",
         API, "PARA engine settings, start-up refusals and adapter validation"),
    Hook("vllm.v1.engine.input_processor", "InputProcessor.process_inputs", "vllm_para.plugin:_wrap_process_inputs",
         API, "admission: every PARA request field is checked and the internal fields written"),
    Hook("vllm.v1.engine.async_llm", "AsyncLLM.add_request", "vllm_para.plugin:_wrap_add_request_async",
         API, "admission of pre-built EngineCoreRequests"),
    Hook("vllm.v1.engine.llm_engine", "LLMEngine.add_request", "vllm_para.plugin:_wrap_add_request",
         API, "admission of pre-built EngineCoreRequests"),
    # engine core
    Hook("vllm.v1.core.kv_cache_utils", "generate_block_hash_extra_keys",
         "vllm_para.enginecore.prefix_cache:_wrap", CORE, "prefix-cache keys of PARA requests"),
    # workers
    Hook(_RUNNER, "GPUModelRunner.load_model", "vllm_para.worker.runner_hooks:_wrap_load_model",
         WORKER, "wrap the loaded model's decoder layers, build the side buffer"),
    Hook("vllm.v1.worker.cpu_model_runner", "CPUModelRunner.load_model",
         "vllm_para.worker.runner_hooks:_wrap_load_model", WORKER, "the CPU runner's own load_model",
         only_if_own=True),
    Hook(_RUNNER, "GPUModelRunner._on_request_state_removed",
         "vllm_para.worker.runner_hooks:_wrap_request_removed", WORKER, "free a finished request's page"),
    Hook(_RUNNER, "GPUModelRunner._model_forward", "vllm_para.worker.runner_hooks:_wrap_model_forward",
         WORKER, "plan the step's vectors right before the forward"),
    Hook(_RUNNER, "GPUModelRunner._determine_batch_execution_and_padding",
         "vllm_para.worker.graph_guard:_wrap_determine_batch_execution", WORKER,
         "mark steps that compute vectors: never a FULL CUDA graph"),
    Hook("vllm.v1.cudagraph_dispatcher", "CudagraphDispatcher.dispatch",
         "vllm_para.worker.graph_guard:_wrap_dispatch", WORKER, "refuse FULL inside a marked step"),
    # the OpenAI server (API server)
    Hook("vllm.engine.arg_utils", "EngineArgs.add_cli_args", "vllm_para.api.cli_args:_wrap_add_cli_args",
         API, "the --enable-para / --para-* flags", kind="staticmethod"),
    Hook("vllm.engine.arg_utils", "EngineArgs.from_cli_args", "vllm_para.api.cli_args:_wrap_from_cli_args",
         API, "fold the flags into additional_config", kind="classmethod"),
    Hook(_SERVING, "BaseServing._check_model", "vllm_para.api.openai_models:wrap_check_model",
         API, "a PARA adapter name is a served model"),
    Hook(_SERVING, "BaseServing._maybe_get_adapters", "vllm_para.api.openai_models:wrap_maybe_get_adapters",
         API, "a model name selects the PARA adapter (no LoRA request)"),
    Hook(_MODELS, "OpenAIServingModels.model_name", "vllm_para.api.openai_models:wrap_model_name",
         API, "responses name the adapter"),
    Hook(_MODELS, "OpenAIServingModels.show_available_models",
         "vllm_para.api.openai_models:wrap_show_available_models", API, "/v1/models lists the adapters"),
    Hook("vllm.entrypoints.launchers.app", "attach_endpoint_plugins", "vllm_para.api.app_hooks:_wrap_attach",
         API, "admin routes and the metrics refresh"),
    Hook("vllm.entrypoints.launchers.api_server.app_state", "init_endpoint_plugins_state",
         "vllm_para.api.app_hooks:_wrap_init_state", API, "worker statistics for /metrics"),
    Hook("vllm.v1.engine.async_llm", "AsyncLLM.generate", "vllm_para.api.generate_hook:wrap_generate",
         API, "per-adapter metrics; beam requests get their adapter"),
    Hook("vllm.entrypoints.generate.beam_search.online", "BeamSearchOnlineMixin.beam_search",
         "vllm_para.api.http_beam_search:wrap_beam_search", API, "HTTP beam search with a PARA adapter"),
)

PATCHES = tuple(h.target for h in HOOKS)


def _import(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def owner_of(hook: Hook):
    """The module or class that holds the hooked attribute (None: optional and absent)."""
    try:
        owner = importlib.import_module(hook.module)
    except ImportError:
        if hook.only_if_own:
            return None
        raise
    *path, name = hook.attr.split(".")
    for part in path:
        owner = getattr(owner, part, None)
        if owner is None:
            if hook.only_if_own:
                return None
            raise RuntimeError(f"vllm-para: {hook.target} not found; this vLLM is not supported (need 0.32.x).")
    if hook.only_if_own and name not in owner.__dict__:
        return None
    return owner


def install_hooks() -> None:
    """Wrap every attribute in `HOOKS` (idempotent)."""
    from vllm_para.patching import wrap_attribute

    for hook in HOOKS:
        owner = owner_of(hook)
        if owner is None:
            continue
        kind = {"staticmethod": staticmethod, "classmethod": classmethod, None: None}[hook.kind]
        wrap_attribute(owner, hook.attr.rsplit(".", 1)[-1], _import(hook.wrapper), kind=kind)
