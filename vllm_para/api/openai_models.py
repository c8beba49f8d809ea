"""PARA adapters as OpenAI "models": selected by the `model` field, listed by
`/v1/models` with `parent` = the base model, named in responses, and unknown
names answered 404 with the list of available ones.

Runs in: the API server.
"""

from __future__ import annotations

import contextvars
import functools
from http import HTTPStatus

from vllm_para.api.admission import frontend_registry
from vllm_para.common.settings import REQUEST_ADAPTER_KEY, adapter_name_problem

# The PARA adapter the current HTTP request selected by `model` name (also the response's model
# name) / uses, by `model` or `vllm_xargs.para_adapter`. Both are set at the start of every OpenAI
# request (`_maybe_get_adapters`, before anything reads them) and read later in the same request
# (`model_name`, HTTP beam search), so they are not reset when that call returns: they must outlive
# it. They cannot leak into another request: uvicorn runs each HTTP request in its own asyncio task,
# on a copy of the context that goes away with the task, and every request overwrites both before
# use (tests/test_server.py mixes adapters and the base model).
_selected_adapter: contextvars.ContextVar[str | None] = contextvars.ContextVar("para_adapter", default=None)
_requested_adapter: contextvars.ContextVar[str | None] = contextvars.ContextVar("para_requested", default=None)


def selected_adapter() -> str | None:
    """The PARA adapter the current HTTP request selected by `model` name."""
    return _selected_adapter.get()


def requested_adapter() -> str | None:
    """The PARA adapter the current HTTP request uses, named by `model` or by `vllm_xargs`."""
    return _requested_adapter.get()


def models_registry(models):
    """The PARA registry of the engine behind an `OpenAIServingModels`."""
    client = getattr(models, "engine_client", None)
    return frontend_registry(getattr(client, "vllm_config", None))


def _para_name(serving, model_name) -> str | None:
    registry = models_registry(serving.models)
    if registry is None or not isinstance(model_name, str) or serving.models.is_base_model(model_name):
        return None
    return model_name if model_name in registry else None


async def _resolve_first_use(serving, request):
    """With --para-adapter-dir: load adapters this request names on first use
    (before admission). Returns an ErrorResponse for a refused one, else None."""
    from vllm_para.api.admission import frontend_state

    from .adapter_manager import AdapterLoadError, manager_of

    client = getattr(serving.models, "engine_client", None)
    state = frontend_state(getattr(client, "vllm_config", None))
    if state is None or state.settings.adapter_dir is None:
        return None
    names = []
    model = request.model
    if isinstance(model, str) and model and not serving.models.is_base_model(model) \
            and model not in serving.models.lora_requests:
        names.append(("model", model))
    xargs = getattr(request, "vllm_xargs", None)
    if isinstance(xargs, dict) and isinstance(xargs.get(REQUEST_ADAPTER_KEY), str):
        names.append(("vllm_xargs.para_adapter", xargs[REQUEST_ADAPTER_KEY]))
    manager = manager_of(state, client)
    for field, name in names:
        if serving.models.is_base_model(name) or name in serving.models.lora_requests:
            return serving.create_error_response(
                f"{field} {name[:80]!r} names the base model (or a LoRA adapter), not a PARA adapter; omit "
                f"{field} to use the base model.", param=field,
            )
        if name in (".", "..") or "/" in name or "\\" in name:
            return serving.create_error_response(
                f"{field} {name[:80]!r} is not an adapter name: names under --para-adapter-dir cannot contain "
                "'/', '\\' or be '.' / '..'.", param=field,
            )
        problem = adapter_name_problem(name)
        if problem:  # e.g. over the file system's 255-byte name limit: refused before any path is built
            return serving.create_error_response(f"{field} {name[:80]!r} is not an adapter name: it {problem}.",
                                                 param=field)
        try:
            await manager.resolve(name)
        except AdapterLoadError as exc:
            return serving.create_error_response(str(exc), param=field)
    return None


def wrap_check_model(original):
    @functools.wraps(original)
    async def _check_model(self, request):
        refused = await _resolve_first_use(self, request)
        if refused is not None:
            return refused
        if _para_name(self, request.model) is not None:
            if self.request_logger is not None:
                self.request_logger.log_request_body(request)
            return None
        error = await original(self, request)
        registry = models_registry(self.models)
        if error is not None and registry is not None and error.error.code == HTTPStatus.NOT_FOUND.value:
            available = [m.name for m in self.models.base_model_paths] + registry.names()
            available += list(self.models.lora_requests)
            shown = request.model if len(str(request.model)) <= 80 else str(request.model)[:80] + "..."
            error.error.message = f"The model `{shown}` does not exist. Available models: {available}."
        return error

    return _check_model


def wrap_maybe_get_adapters(original):
    @functools.wraps(original)
    def _maybe_get_adapters(self, request, *args, **kwargs):
        from vllm.exceptions import VLLMValidationError

        from vllm_para.api.admission import check_extra_args, frontend_state

        client = getattr(self.models, "engine_client", None)
        state = frontend_state(getattr(client, "vllm_config", None))
        name = _para_name(self, request.model)
        _selected_adapter.set(name)
        _requested_adapter.set(name)
        xargs = getattr(request, "vllm_xargs", None)
        if state is not None and isinstance(xargs, dict):
            # The engine's admission checks this again; checking here too answers a
            # streamed request with a 4xx before its stream starts.
            check_extra_args(state, xargs)
        if name is None:
            chosen = xargs.get(REQUEST_ADAPTER_KEY) if isinstance(xargs, dict) and state is not None else None
            if chosen is not None:  # base model + vllm_xargs.para_adapter: beam search must know it too
                _requested_adapter.set(chosen)
            return original(self, request, *args, **kwargs)
        if not hasattr(request, "vllm_xargs"):
            raise VLLMValidationError(f"PARA adapter {name!r} serves text generation only.", parameter="model")
        chosen = (request.vllm_xargs or {}).get(REQUEST_ADAPTER_KEY)
        if chosen not in (None, name):
            raise VLLMValidationError(
                f"model {name!r} and vllm_xargs.para_adapter {chosen!r} name different PARA adapters; give one.",
                parameter="vllm_xargs",
            )
        request.vllm_xargs = {**(request.vllm_xargs or {}), REQUEST_ADAPTER_KEY: name}
        return None

    return _maybe_get_adapters


def wrap_model_name(original):
    @functools.wraps(original)
    def model_name(self, lora_request=None):
        if lora_request is None and (name := _selected_adapter.get()) is not None:
            return name
        return original(self, lora_request)

    return model_name


def wrap_show_available_models(original):
    @functools.wraps(original)
    async def show_available_models(self):
        from vllm.entrypoints.serve.engine.protocol import ModelCard, ModelPermission

        model_list = await original(self)
        registry = models_registry(self)
        if registry is not None:
            base = self.base_model_paths[0].name
            for name in registry.names():
                entry = registry.get(name)
                model_list.data.append(
                    ModelCard(id=name, root=entry.path, parent=base, permission=[ModelPermission()],
                              metadata={"kind": entry.kind})  # "para" or "ia3" (an extra field vLLM allows)
                )
        return model_list

    return show_available_models
