"""Methods PARA adds to vLLM workers through vLLM's `worker_extension_cls`,
callable with `collective_rpc("para_...")` from `LLM` or the API server.

They run between steps (vLLM serialises utility calls with the engine loop),
never inside a forward; a failure raises back to the caller, which rolls back.

Runs in: every worker process.
"""

from __future__ import annotations

from typing import Any

from vllm_para.adapter import AdapterFiles
from vllm_para.worker.runtime import PARARuntime, runtime_of

EXTENSION_QUALNAME = "vllm_para.worker.extension.PARAWorkerExtension"


class PARAWorkerExtension:
    def _para_runtime(self) -> PARARuntime:
        runtime = runtime_of(self.model_runner)
        if runtime is None:
            raise RuntimeError("this worker runs no PARA model (start the engine with additional_config['para']).")
        return runtime

    def para_stats(self) -> dict[str, Any]:
        runtime = runtime_of(getattr(self, "model_runner", None))
        return runtime.stats() if runtime is not None else {}

    def para_add_adapter(self, name: str, files: list, version: int) -> int:
        """Validate the adapter's bytes as the API server read them (`AdapterFiles.to_wire`; same
        checks, plus their digest) and keep it in host memory. No file is opened here: this runs
        between engine steps, and a worker on another node needs no access to the files."""
        return self._para_runtime().add_adapter(name, AdapterFiles.from_wire(files), version)

    def para_remove_adapter(self, name: str, version: int) -> None:
        """Forget (name, version): called once no request uses it (or to roll back a failed load)."""
        self._para_runtime().remove_adapter(name, version)
