"""`POST /v1/load_para_adapter` and `POST /v1/unload_para_adapter`.

Registered only when `VLLM_ALLOW_RUNTIME_PARA_UPDATING=1`, as vLLM does for
its LoRA endpoints; otherwise those paths answer 404.
"""

from __future__ import annotations

import asyncio
import logging
import os
from http import HTTPStatus

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from ..engine.adapter_slots import UnknownAdapterError
from ..engine.frontend import frontend_registry

logger = logging.getLogger("vllm.para")  # under vLLM's logger: same handlers and level

RUNTIME_UPDATING_ENV = "VLLM_ALLOW_RUNTIME_PARA_UPDATING"

router = APIRouter()


class LoadPARAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    para_name: str
    para_path: str


class UnloadPARAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    para_name: str


def runtime_updating_enabled() -> bool:
    return os.environ.get(RUNTIME_UPDATING_ENV, "").lower() in ("1", "true")


def _error(message: str, status: HTTPStatus) -> JSONResponse:
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    err_type = "NotFoundError" if status == HTTPStatus.NOT_FOUND else "BadRequestError"
    body = create_error_response(message, err_type=err_type, status_code=status)
    return JSONResponse(content=body.model_dump(), status_code=status.value)


@router.post("/v1/load_para_adapter")
async def load_para_adapter(body: LoadPARAAdapterRequest, raw: Request):
    registry = frontend_registry()
    name = body.para_name
    models = raw.app.state.openai_serving_models
    if registry is None:
        return _error("PARA is not enabled on this server (start it with --enable-para).", HTTPStatus.BAD_REQUEST)
    if not name or models.is_base_model(name) or name in models.lora_requests:
        return _error(f"The name {name!r} is empty or already names the base model or a LoRA adapter.",
                      HTTPStatus.BAD_REQUEST)
    if name in registry:
        return _error(f"PARA adapter {name!r} is already loaded; unload it first.", HTTPStatus.BAD_REQUEST)
    try:  # full validation (config, every tensor, base-model fit) before any worker sees it
        entry = await asyncio.to_thread(registry.add, name, body.para_path)
    except Exception as exc:
        return _error(f"Cannot load PARA adapter {name!r} from {body.para_path}: {exc}", HTTPStatus.BAD_REQUEST)
    try:
        await raw.app.state.engine_client.collective_rpc("para_add_adapter", args=(name, entry.path, entry.version))
    except Exception as exc:
        registry.remove(name)
        return _error(f"Workers failed to load PARA adapter {name!r}: {exc}", HTTPStatus.INTERNAL_SERVER_ERROR)
    logger.info("PARA adapter %r loaded from %s", name, entry.path)
    return Response(status_code=200, content=f"Success: PARA adapter '{name}' added successfully.")


@router.post("/v1/unload_para_adapter")
async def unload_para_adapter(body: UnloadPARAAdapterRequest, raw: Request):
    registry = frontend_registry()
    if registry is None:
        return _error("PARA is not enabled on this server (start it with --enable-para).", HTTPStatus.BAD_REQUEST)
    try:
        registry.remove(body.para_name)  # new requests now get 404; in-flight ones finish
    except UnknownAdapterError as exc:
        return _error(str(exc), HTTPStatus.NOT_FOUND)
    await raw.app.state.engine_client.collective_rpc("para_remove_adapter", args=(body.para_name,))
    logger.info("PARA adapter %r unloaded", body.para_name)
    return Response(status_code=200, content=f"Success: PARA adapter '{body.para_name}' removed successfully.")
