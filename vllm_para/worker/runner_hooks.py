"""The places PARA joins vLLM's model runner (V1 `GPUModelRunner`, which
`CPUModelRunner` subclasses):

- `load_model` (GPU and CPU runners): once vLLM has built and loaded its own
  model, PARA wraps its decoder layers' modules and builds the side buffer,
  slots and registry (like vLLM's `load_lora_model` step);
- `_on_request_state_removed` (vLLM's hook for request-scoped side caches):
  the page of a finished or aborted request goes back to the free list;
- `_model_forward`: before the forward, assign pages to tokens and plan the VG
  for prompts in their prefill step (refusing loudly a FULL CUDA-graph replay
  of such a step, see graph_guard.py); after it, clear the plan so dummy and
  profile runs (which bypass `_model_forward`) never see stale indices, and
  mark the planned pages filled (only now: their VG has run).

Both wrappers do nothing unless this process runs a PARA model.

Runs in: every worker process.
"""

from __future__ import annotations

import functools

from vllm_para.common.settings import PARASettings
from vllm_para.worker.graph_guard import (
    check_not_full_graph,
    current_cudagraph_mode,
)
from vllm_para.worker.runtime import runtime_of


def _wrap_request_removed(original):
    @functools.wraps(original)
    def _on_request_state_removed(self, req_id, req_state, *args, **kwargs):
        runtime = runtime_of(self)
        if runtime is not None:
            runtime.release([req_id])
        return original(self, req_id, req_state, *args, **kwargs)

    return _on_request_state_removed


def _wrap_model_forward(original):
    @functools.wraps(original)
    def _model_forward(self, *args, **kwargs):
        runtime = runtime_of(self)
        if runtime is None:
            return original(self, *args, **kwargs)
        plan = runtime.plan_step(self)  # marks nothing filled: that happens after the forward ran
        check_not_full_graph(current_cudagraph_mode(), bool(plan))  # loud, before any VG is skipped
        runtime.pages.plan = plan  # read by the VG op through the forward context (ops.py)
        try:
            output = original(self, *args, **kwargs)
        finally:
            runtime.pages.plan = None
        runtime.pages.commit_filled(plan.pending_fills)  # a page counts as filled only once its VG has run
        return output

    return _model_forward


def _wrap_load_model(original):
    @functools.wraps(original)
    def load_model(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        settings = PARASettings.from_additional_config(self.vllm_config.additional_config)
        if settings is not None:
            from vllm_para.worker.runtime import install_runtime

            install_runtime(self.get_model(), self.vllm_config, settings, self.device)
        return result

    return load_model
