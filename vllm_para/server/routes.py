"""`POST /v1/load_para_adapter` and `POST /v1/unload_para_adapter`.

Registered only when `VLLM_ALLOW_RUNTIME_PARA_UPDATING=1`, as vLLM does for
its LoRA endpoints; otherwise those paths answer 404 (and with more than one
API server process the server refuses to start, like vLLM's LoRA updating).

Load: the API server validates the adapter (every tensor, base-model fit,
`--max-para-rank`) without publishing it, every worker then reads, checks
(same checks, plus the file's sha256 against the API server's) and keeps it
in host memory; only when all have it is the name published. A failure on
any worker rolls the load back on all of them.

Unload: the name stops being selectable at once; requests admitted before
finish under the version they were admitted with, and the workers forget that
version only when the last of them has ended.
"""

from __future__ import annotations

import asyncio
import logging
import os
from http import HTTPStatus

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..engine.adapter_slots import UnknownAdapterError
from ..engine.frontend import FrontendState, frontend_state
from ..engine.settings import adapter_name_problem

logger = logging.getLogger("vllm.para")  # under vLLM's logger: same handlers and level

RUNTIME_UPDATING_ENV = "VLLM_ALLOW_RUNTIME_PARA_UPDATING"

router = APIRouter()


RETIRE_POLL_SECONDS = 0.05


class LoadPARAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    para_name: str = Field(max_length=4096)
    para_path: str = Field(min_length=1, max_length=4096)


class UnloadPARAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    para_name: str = Field(max_length=4096)


def runtime_updating_enabled() -> bool:
    return os.environ.get(RUNTIME_UPDATING_ENV, "").lower() in ("1", "true")


def _error(message: str, status: HTTPStatus) -> JSONResponse:
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    err_type = "NotFoundError" if status == HTTPStatus.NOT_FOUND else "BadRequestError"
    body = create_error_response(message, err_type=err_type, status_code=status)
    return JSONResponse(content=body.model_dump(), status_code=status.value)


def _state(raw: Request) -> FrontendState | None:
    return frontend_state(raw.app.state.engine_client.vllm_config)


def _lock(raw: Request) -> asyncio.Lock:
    lock = getattr(raw.app.state, "para_update_lock", None)
    if lock is None:
        lock = raw.app.state.para_update_lock = asyncio.Lock()
    return lock


@router.post("/v1/load_para_adapter")
async def load_para_adapter(body: LoadPARAAdapterRequest, raw: Request):
    state = _state(raw)
    name = body.para_name
    models = raw.app.state.openai_serving_models
    if state is None:
        return _error("PARA is not enabled on this server (start it with --enable-para).", HTTPStatus.BAD_REQUEST)
    problem = adapter_name_problem(name)
    if problem:
        return _error(f"para_name {name[:80]!r} is invalid: it {problem}.", HTTPStatus.BAD_REQUEST)
    if models.is_base_model(name) or name in models.lora_requests:
        return _error(f"The name {name!r} already names the base model or a LoRA adapter.", HTTPStatus.BAD_REQUEST)
    client = raw.app.state.engine_client
    async with _lock(raw):
        registry = state.registry
        try:  # full validation (config, every tensor, base-model fit, max rank); not yet selectable
            entry = await asyncio.to_thread(registry.load, name, body.para_path)
        except Exception as exc:
            return _error(f"Cannot load PARA adapter {name!r} from {body.para_path[:300]}: {exc}",
                          HTTPStatus.BAD_REQUEST)
        try:
            await client.collective_rpc("para_add_adapter", args=(name, entry.path, entry.version, entry.digest))
        except Exception as exc:
            registry.abandon(entry)
            try:  # roll back the workers that did load it
                await client.collective_rpc("para_remove_adapter", args=(name, entry.version))
            except Exception as undo_exc:  # pragma: no cover - engine going down
                logger.warning("PARA: rollback of adapter %r failed: %s", name, undo_exc)
            return _error(f"Cannot load PARA adapter {name!r}: a worker refused it: {_rpc_reason(exc)}",
                          HTTPStatus.BAD_REQUEST)
        registry.publish(entry)  # every worker has it: selectable from now on
    logger.info("PARA adapter %r loaded from %s (version %d)", name, entry.path, entry.version)
    return Response(status_code=200, content=f"Success: PARA adapter '{name}' added successfully.")


def _rpc_reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


@router.post("/v1/unload_para_adapter")
async def unload_para_adapter(body: UnloadPARAAdapterRequest, raw: Request):
    state = _state(raw)
    if state is None:
        return _error("PARA is not enabled on this server (start it with --enable-para).", HTTPStatus.BAD_REQUEST)
    async with _lock(raw):
        try:
            entry = state.registry.remove(body.para_name)  # new requests now get 404; in-flight ones finish
        except UnknownAdapterError as exc:
            return _error(str(exc), HTTPStatus.NOT_FOUND)
    tasks = getattr(raw.app.state, "para_retire_tasks", None)
    if tasks is None:
        tasks = raw.app.state.para_retire_tasks = set()
    task = asyncio.get_running_loop().create_task(_retire_when_idle(raw.app.state.engine_client, state, entry))
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    logger.info("PARA adapter %r unloaded", body.para_name)
    return Response(status_code=200, content=f"Success: PARA adapter '{body.para_name}' removed successfully.")


async def _retire_when_idle(client, state: FrontendState, entry) -> None:
    """Workers forget (name, version) once no admitted request uses it."""
    key = (entry.name, entry.version)
    while state.in_flight(key):
        await asyncio.sleep(RETIRE_POLL_SECONDS)
    state.registry.retire(*key)
    try:
        await client.collective_rpc("para_remove_adapter", args=key)
    except Exception as exc:  # pragma: no cover - engine going down
        logger.warning("PARA: workers could not drop adapter %r version %d: %s", *key, exc)
