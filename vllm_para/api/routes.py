"""`POST /v1/load_para_adapter` and `POST /v1/unload_para_adapter`.

Registered only when `VLLM_ALLOW_RUNTIME_PARA_UPDATING=1`, as vLLM does for
its LoRA endpoints; otherwise those paths answer 404 (and with more than one
API server process the server refuses to start, like vLLM's LoRA updating).

How loads and unloads stay consistent across workers: api/adapter_manager.py.

Runs in: the API server.
"""

from __future__ import annotations

import logging
import os
from http import HTTPStatus

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from vllm_para.api.admission import frontend_state
from vllm_para.common.catalog import UnknownAdapterError

from .adapter_manager import AdapterLoadError, AdapterManager, manager_of

logger = logging.getLogger("vllm.para")  # under vLLM's logger: same handlers and level

RUNTIME_UPDATING_ENV = "VLLM_ALLOW_RUNTIME_PARA_UPDATING"

router = APIRouter()


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
    from vllm.entrypoints.serve.exception_handling.error_response import (
        create_error_response,
    )

    err_type = "NotFoundError" if status == HTTPStatus.NOT_FOUND else "BadRequestError"
    body = create_error_response(message, err_type=err_type, status_code=status)
    return JSONResponse(content=body.model_dump(), status_code=status.value)


def _manager(raw: Request) -> AdapterManager | None:
    client = raw.app.state.engine_client
    state = frontend_state(client.vllm_config)
    return manager_of(state, client) if state is not None else None


@router.post("/v1/load_para_adapter")
async def load_para_adapter(body: LoadPARAAdapterRequest, raw: Request):
    manager = _manager(raw)
    name = body.para_name
    models = raw.app.state.openai_serving_models
    if manager is None:
        return _error("PARA is not enabled on this server (start it with --enable-para).", HTTPStatus.BAD_REQUEST)
    if models.is_base_model(name) or name in models.lora_requests:
        return _error(f"The name {name[:80]!r} already names the base model or a LoRA adapter.",
                      HTTPStatus.BAD_REQUEST)
    try:
        await manager.load(name, body.para_path)
    except AdapterLoadError as exc:
        return _error(str(exc), HTTPStatus.BAD_REQUEST)
    return Response(status_code=200, content=f"Success: PARA adapter '{name}' added successfully.")


@router.post("/v1/unload_para_adapter")
async def unload_para_adapter(body: UnloadPARAAdapterRequest, raw: Request):
    manager = _manager(raw)
    if manager is None:
        return _error("PARA is not enabled on this server (start it with --enable-para).", HTTPStatus.BAD_REQUEST)
    try:
        await manager.unload(body.para_name)
    except UnknownAdapterError as exc:
        return _error(str(exc), HTTPStatus.NOT_FOUND)
    return Response(status_code=200, content=f"Success: PARA adapter '{body.para_name}' removed successfully.")
