"""The worker's adapter store: the catalog plus each registered adapter's VG weights in host memory.

Runs in every worker. The VG runs only at prefill, so only the adapters of the
prompts in the current step must be resident on the device: `AdapterSlots`
fills device slots from these host copies on demand (least-recently-used), and
a step that needs more adapters than there are slots gets temporary device
copies for that step instead of an error. Nothing here opens a file after
registration: the bytes arrive over `collective_rpc` from the API server.

Runs in: every worker process.
"""

from __future__ import annotations

from typing import Callable

from vllm_para.adapter import DEFAULT_READ_TIMEOUT_S
from vllm_para.common.catalog import AdapterCatalog
from vllm_para.config import ModelShape, PARAConfig
from vllm_para.core import VGWeights


class HostStore(AdapterCatalog):
    """An `AdapterCatalog` whose entries keep `prepare_weights(weights, config)` (this rank's
    host copy, e.g. sliced for tensor parallelism and pinned)."""

    def __init__(self, shape: ModelShape, modules: dict[str, str] | None = None, max_rank: int | None = None,
                 prepare_weights: Callable[[VGWeights, PARAConfig], VGWeights] | None = None,
                 read_timeout_s: float | None = DEFAULT_READ_TIMEOUT_S) -> None:
        self.prepare_weights = prepare_weights or (lambda weights, config: weights)
        super().__init__(shape, modules, max_rank=max_rank, read_timeout_s=read_timeout_s)

    def _host_weights(self, weights: VGWeights, config: PARAConfig) -> VGWeights:
        return self.prepare_weights(weights, config)

    @property
    def host_bytes(self) -> int:
        return sum(e.host_bytes for e in list(self._all.values()))
