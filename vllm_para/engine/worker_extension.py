"""Methods PARA adds to vLLM workers through vLLM's `worker_extension_cls`,
callable with `collective_rpc("para_...")` from `LLM` or the API server."""

from __future__ import annotations

from typing import Any

from .runtime import get_runtime

EXTENSION_QUALNAME = "vllm_para.engine.worker_extension.PARAWorkerExtension"


class PARAWorkerExtension:
    def para_stats(self) -> dict[str, Any]:
        runtime = get_runtime()
        return runtime.stats() if runtime is not None else {}

    def para_add_adapter(self, name: str, path: str, version: int) -> int:
        # validated in full by the API server before it asked the workers
        return get_runtime().registry.add(name, path, version, check_weights=False).version

    def para_remove_adapter(self, name: str) -> None:
        # In-flight requests keep using (name, version); its slot is reclaimed by LRU.
        get_runtime().registry.remove(name)
