"""The two places PARA joins vLLM's model runner (V1 `GPUModelRunner`, which
`CPUModelRunner` subclasses):

- `_on_request_state_removed` (vLLM's hook for request-scoped side caches):
  the page of a finished or aborted request goes back to the free list;
- `_model_forward`: before the forward, assign pages to tokens and plan the VG
  for prompts in their prefill step; after it, clear the plan so dummy and
  profile runs (which bypass `_model_forward`) never see stale indices.

Both wrappers do nothing unless this process runs a PARA model.
"""

from __future__ import annotations

import functools

from .runtime import get_runtime
from .step_plan import set_plan

PATCHED_METHODS = ("_on_request_state_removed", "_model_forward")


def _wrap_request_removed(original):
    @functools.wraps(original)
    def _on_request_state_removed(self, req_id, req_state, *args, **kwargs):
        runtime = get_runtime()
        if runtime is not None:
            runtime.release([req_id])
        return original(self, req_id, req_state, *args, **kwargs)

    _on_request_state_removed.__para_wrapped__ = True
    return _on_request_state_removed


def _wrap_model_forward(original):
    @functools.wraps(original)
    def _model_forward(self, *args, **kwargs):
        runtime = get_runtime()
        if runtime is None:
            return original(self, *args, **kwargs)
        set_plan(runtime.plan_step(self))
        try:
            return original(self, *args, **kwargs)
        finally:
            set_plan(None)

    _model_forward.__para_wrapped__ = True
    return _model_forward


def install_runner_hooks() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    for name, wrap in (("_on_request_state_removed", _wrap_request_removed), ("_model_forward", _wrap_model_forward)):
        original = getattr(GPUModelRunner, name, None)
        if original is None:
            raise RuntimeError(
                f"vllm-para: vLLM's GPUModelRunner has no {name}(); this vLLM is not supported (need 0.32.x)."
            )
        if not getattr(original, "__para_wrapped__", False):
            setattr(GPUModelRunner, name, wrap(original))
