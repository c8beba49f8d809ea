"""Keep FULL CUDA graphs away from steps that must run the VG.

The `vllm_para::compute_vectors` op is a splitting op, so PIECEWISE CUDA
graphs (and eager steps) run it with the current step's plan. A FULL CUDA
graph replays the whole forward as captured, from a dummy run with no plan:
the op does not run. vLLM 0.32 picks the graph mode per step in
`GPUModelRunner._determine_batch_execution_and_padding` (called by
`execute_model` after `_prepare_inputs`, before the forward context is set
and before `_model_forward`, where PARA plans the step). It hands the choice
to `CudagraphDispatcher.dispatch`, which returns FULL whenever a FULL key
matches:

- FULL_AND_PIECEWISE / FULL_DECODE_ONLY: a step in which every request
  schedules exactly one token is a "uniform decode" batch. A PARA prompt of
  one token, or a prefix-cache hit leaving one prompt token to compute, is
  such a step;
- FULL: every step up to the largest capture size, prefills included.

So the guard wraps both:

- `_determine_batch_execution_and_padding`: if this process runs PARA, the
  engine may use FULL graphs and the batch holds a PARA prompt in its prefill
  step (`step_needs_vg`), it marks the call "no full graph";
- `CudagraphDispatcher.dispatch`: inside such a call, FULL is added to
  `invalid_modes` (the same mechanism vLLM uses for encoder-decoder steps), so
  the step gets the PIECEWISE graph of its size, or NONE (eager) where the
  engine captured no piecewise graphs. Every dispatch of the call is covered,
  including the re-dispatch after data-parallel padding (whose synced mode is
  the minimum over ranks, so it is never FULL either).

`check_not_full_graph` is the loud assertion for the `_model_forward` hook:
the mode vLLM actually chose is in the forward context there
(`current_cudagraph_mode`).

Dummy, profile and capture runs (`_dummy_run`, which never calls
`_model_forward` and so never runs the VG) pass `force_uniform_decode`; the
guard leaves them alone, so capture always gets the mode it asked for.
Without a PARA runtime, or when the engine captures no FULL graphs (CPU,
`enforce_eager`, PIECEWISE), every wrapper passes straight through.

Runs in: every worker process (GPU runners).
"""

from __future__ import annotations

import functools
import inspect
from contextvars import ContextVar

from vllm_para.common.request import PARARequest, needs_vg

# True only while `_determine_batch_execution_and_padding` runs for a step that must run the VG.
_no_full_graph: ContextVar[bool] = ContextVar("vllm_para_no_full_graph", default=False)


class PARAGraphModeError(RuntimeError):
    """A step that must compute PARA vectors was (or would be) run as a FULL CUDA graph."""


# ---------------------------------------------------------------------- pure helpers
def runtime_for(runner):
    """The PARA runtime serving `runner` (None: not a PARA engine), found through the
    runner's model (`runtime.runtime_of`)."""
    from . import runtime

    return runtime.runtime_of(runner)


def _is_full(mode) -> bool:
    return getattr(mode, "name", mode) == "FULL"


def step_needs_vg(runner, filled) -> bool:
    """Whether the runner's current batch holds a request whose PARA vectors are
    computed in this step: `common.request.needs_vg`, the rule `PARARuntime.plan_step`
    applies, with `filled` the runtime's set of request ids whose pages are filled
    (`VectorPages.filled`).

    Reads only the persistent batch (`input_batch.req_ids`, `num_reqs`) and
    `runner.requests`; valid from `_prepare_inputs` until the end of the step.
    """
    batch = runner.input_batch
    num_reqs = int(batch.num_reqs)
    requests = runner.requests
    for rid in batch.req_ids[:max(num_reqs, 0)]:
        state = requests.get(rid)
        if needs_vg(PARARequest.of(getattr(state, "sampling_params", None)), rid in filled):
            return True
    return False


def check_not_full_graph(mode, plan_nonempty: bool) -> None:
    """Fail loudly if a step with VG work runs as a FULL CUDA graph.

    `mode` is the runtime mode vLLM chose for the step (a `CUDAGraphMode`, or
    its name; None when there is no forward context); `plan_nonempty` whether
    the step must compute PARA vectors (`bool(plan)` or `step_needs_vg(...)`).
    """
    if plan_nonempty and _is_full(mode):
        raise PARAGraphModeError(
            "vllm-para: this step must compute PARA vectors (a PARA prompt is in its prefill step) but vLLM "
            "dispatched it to a FULL CUDA graph, in which the vllm_para::compute_vectors op does not run: the "
            "prompt would decode with stale vectors. The graph guard (vllm_para.worker.graph_guard."
            "_wrap_determine_batch_execution, installed by vllm_para.hooks) is missing or vLLM changed how it picks "
            "the graph mode; as a workaround "
            "serve with --compilation-config '{\"cudagraph_mode\": \"PIECEWISE\"}' or --enforce-eager."
        )


def current_cudagraph_mode():
    """The CUDA-graph runtime mode of the running forward (None outside one).

    `execute_model` calls `_model_forward` inside
    `set_forward_context(..., cudagraph_runtime_mode=cudagraph_mode, ...)`, the
    mode the CUDA-graph wrappers act on."""
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if not is_forward_context_available():
        return None
    return get_forward_context().cudagraph_runtime_mode


def assert_step_not_full_graph(runner, runtime) -> None:
    """For the `_model_forward` hook, before `runtime.plan_step(runner)` (which
    marks pages filled): refuse a FULL-graph step that must run the VG."""
    check_not_full_graph(current_cudagraph_mode(), step_needs_vg(runner, runtime.pages.filled))


def _may_use_full_graphs(runner) -> bool:
    mode = getattr(getattr(runner, "cudagraph_dispatcher", None), "cudagraph_mode", None)
    has_full = getattr(mode, "has_full_cudagraphs", None)
    return bool(has_full()) if has_full is not None else True


# -------------------------------------------------------------------------- wrappers
def _wrap_determine_batch_execution(original):
    @functools.wraps(original)
    def _determine_batch_execution_and_padding(self, *args, **kwargs):
        runtime = runtime_for(self)
        if (
            runtime is None
            or kwargs.get("force_uniform_decode") is not None  # _dummy_run: capture / profile / DP padding
            or not _may_use_full_graphs(self)
            or not step_needs_vg(self, runtime.pages.filled)
        ):
            return original(self, *args, **kwargs)
        token = _no_full_graph.set(True)
        try:
            return original(self, *args, **kwargs)
        finally:
            _no_full_graph.reset(token)

    return _determine_batch_execution_and_padding


def _wrap_dispatch(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def dispatch(self, *args, **kwargs):
        if not _no_full_graph.get():
            return original(self, *args, **kwargs)
        from vllm.config import CUDAGraphMode

        bound = signature.bind(self, *args, **kwargs)
        invalid = frozenset(bound.arguments.get("invalid_modes") or ()) | {CUDAGraphMode.FULL}
        valid = bound.arguments.get("valid_modes")
        if valid and not (frozenset(valid) - invalid):
            raise PARAGraphModeError(
                f"vllm-para: this step must compute PARA vectors, but vLLM allows only {sorted(m.name for m in valid)} "
                "CUDA-graph modes for it; the VG op does not run inside a FULL CUDA graph."
            )
        bound.arguments["invalid_modes"] = invalid
        mode, batch_descriptor = original(*bound.args, **bound.kwargs)
        check_not_full_graph(mode, True)
        return mode, batch_descriptor

    return dispatch
