"""The graph guard: a step that must run the VG never gets a FULL CUDA graph.

CPU only: vLLM's real `_determine_batch_execution_and_padding` and
`CudagraphDispatcher` run on a fake runner (numpy arrays, no model, no GPU),
with the dispatcher's keys initialised as on a GPU for each CUDA-graph mode.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import numpy as np
import pytest

import vllm_para.worker.graph_guard as guard
from vllm_para.hooks import HOOKS, install_hooks
from vllm_para.patching import is_wrapped

GUARD_PATCHES = tuple(h.target for h in HOOKS if h.wrapper.startswith(guard.__name__ + ":"))

CAPTURE_SIZES = [1, 2, 4, 8, 16, 32]


def _resolve(dotted: str):
    import importlib

    module, cls, attr = dotted.rsplit(".", 2)
    return getattr(getattr(importlib.import_module(module), cls), attr)


@pytest.fixture(scope="module", autouse=True)
def installed():
    install_hooks()


# --------------------------------------------------------------- the vLLM we rely on
SIGNATURES = {
    "_determine_batch_execution_and_padding": [
        "self", "num_tokens", "num_reqs", "num_scheduled_tokens_np", "max_num_scheduled_tokens",
        "use_cascade_attn", "allow_microbatching", "force_eager", "force_uniform_decode",
    ],
    "dispatch": [
        "self", "num_tokens", "uniform_decode", "has_lora", "num_active_loras", "valid_modes", "invalid_modes",
    ],
}


def test_the_guard_has_its_two_hooks():
    assert [t.rsplit(".", 1)[1] for t in GUARD_PATCHES] == ["_determine_batch_execution_and_padding", "dispatch"]


@pytest.mark.parametrize("target", GUARD_PATCHES)
def test_patched_targets_exist_and_are_wrapped(target):
    fn = _resolve(target)
    assert is_wrapped(fn), f"{target} is not wrapped by the graph guard"
    params = list(inspect.signature(inspect.unwrap(fn)).parameters)
    expected = SIGNATURES[target.rsplit(".", 1)[1]]
    assert params[: len(expected)] == expected, f"{target} signature changed: {params}"


def test_install_is_idempotent():
    before = _resolve(GUARD_PATCHES[1])
    install_hooks()
    assert _resolve(GUARD_PATCHES[1]) is before


def test_vllm_paths_we_rely_on():
    from vllm.v1.worker import gpu_model_runner

    source = inspect.getsource(gpu_model_runner.GPUModelRunner)
    for needle in (
        "self.cudagraph_dispatcher.dispatch(",  # the decision goes through the wrapped dispatcher
        "invalid_modes={CUDAGraphMode.FULL} if disable_full else None",  # keyword, as we rewrite it
        "force_uniform_decode=uniform_decode,",  # _dummy_run marks itself (the guard leaves it alone)
        ") = self._determine_batch_execution_and_padding(",  # execute_model decides per step
        "cudagraph_runtime_mode=cudagraph_mode,",  # ... and publishes the mode in the forward context
        "self._model_forward(",
    ):
        assert needle in source, f"vLLM moved: {needle!r}"
    execute = inspect.getsource(gpu_model_runner.GPUModelRunner.execute_model)
    # the mode is decided after the inputs (and num_computed_tokens_cpu) are prepared, before the forward
    assert execute.index("self._prepare_inputs(") < execute.index("self._determine_batch_execution_and_padding(")
    assert execute.index("self._determine_batch_execution_and_padding(") < execute.index("self._model_forward(")
    dummy = inspect.getsource(gpu_model_runner.GPUModelRunner._dummy_run)
    assert "force_uniform_decode=" in dummy and "self._model_forward(" not in dummy
    from vllm.forward_context import ForwardContext

    assert "cudagraph_runtime_mode" in ForwardContext.__dataclass_fields__


# -------------------------------------------------------------------- fake runner
def _request(adapter=None):
    extra = {"para_adapter": adapter} if adapter else None
    return SimpleNamespace(sampling_params=SimpleNamespace(extra_args=extra))


def _runner(reqs, dispatcher=None):
    """reqs: (req_id, adapter or None, num_computed_tokens, num_prompt_tokens)."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    n = len(reqs)
    batch = SimpleNamespace(
        req_ids=[r[0] for r in reqs],
        num_reqs=n,
        num_computed_tokens_cpu=np.array([r[2] for r in reqs] + [0] * 4, dtype=np.int32),
        num_prompt_tokens=np.array([r[3] for r in reqs] + [0] * 4, dtype=np.int32),
        lora_id_to_lora_request={},
    )
    return SimpleNamespace(
        input_batch=batch,
        requests={r[0]: _request(r[1]) for r in reqs},
        cudagraph_dispatcher=dispatcher,
        _is_uniform_decode=GPUModelRunner._is_uniform_decode,
        uniform_decode_query_len=1,
        model_config=SimpleNamespace(is_encoder_decoder=False),
        vllm_config=SimpleNamespace(
            parallel_config=SimpleNamespace(data_parallel_size=1),
            observability_config=SimpleNamespace(cudagraph_metrics=False),
        ),
    )


def _dispatcher(mode_name: str):
    """vLLM's real dispatcher, keys initialised as a GPU engine with `mode_name` would."""
    from vllm.config import CUDAGraphMode
    from vllm.v1.cudagraph_dispatcher import CudagraphDispatcher

    mode = CUDAGraphMode[mode_name]
    compilation = SimpleNamespace(
        cudagraph_mode=mode,
        is_attention_compiled_piecewise=lambda: True,
        max_cudagraph_capture_size=max(CAPTURE_SIZES),
        cudagraph_capture_sizes=list(CAPTURE_SIZES),
        compile_sizes=[],
        cudagraph_specialize_lora=False,
    )
    config = SimpleNamespace(
        compilation_config=compilation,
        num_speculative_tokens=0,
        lora_config=None,
        scheduler_config=SimpleNamespace(max_num_seqs=16),
    )
    dispatcher = CudagraphDispatcher(config)
    dispatcher.initialize_cudagraph_keys(mode, 1)
    return dispatcher


@pytest.fixture
def para_runtime(monkeypatch):
    runtime = SimpleNamespace(pages=SimpleNamespace(filled=set(DECODING_FILLED)))
    monkeypatch.setattr(guard, "runtime_for", lambda runner: runtime)
    return runtime


DECODES = [("d0", "sql", 20, 12), ("d1", None, 9, 5)]  # one PARA and one plain request decoding
DECODING_FILLED = {"d0"}  # d0's page was filled at its prefill
ONE_TOKEN_PROMPT = ("p", "sql", 0, 1)  # a one-token PARA prompt
PREFIX_HIT = ("h", "qa", 16, 17)  # a prefix-cache hit leaving one prompt token to compute


def _decide(runner, num_scheduled=None):
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    n = runner.input_batch.num_reqs
    tokens = np.array(num_scheduled or [1] * n, dtype=np.int32)
    mode, desc, *_ = GPUModelRunner._determine_batch_execution_and_padding(
        runner,
        num_tokens=int(tokens.sum()),
        num_reqs=n,
        num_scheduled_tokens_np=tokens,
        max_num_scheduled_tokens=int(tokens.max()),
        use_cascade_attn=False,
    )
    return mode, desc


# -------------------------------------------------------------------- pure helpers
def test_step_needs_vg():
    filled = DECODING_FILLED
    assert not guard.step_needs_vg(_runner(DECODES), filled)
    assert guard.step_needs_vg(_runner(DECODES + [ONE_TOKEN_PROMPT]), filled)
    assert guard.step_needs_vg(_runner([PREFIX_HIT] + DECODES), filled)
    assert not guard.step_needs_vg(_runner([("plain", None, 0, 7)]), filled)  # no adapter: base model
    assert not guard.step_needs_vg(_runner([("empty-extra", "", 0, 7)]), filled)
    # a preempted request keeps its vectors: recomputed without the VG
    assert guard.step_needs_vg(_runner([("r", "sql", 0, 7)]), set())
    assert not guard.step_needs_vg(_runner([("r", "sql", 0, 7)]), {"r"})
    # only the first num_reqs entries of the persistent batch are live
    runner = _runner(DECODES + [ONE_TOKEN_PROMPT])
    runner.input_batch.num_reqs = 2
    assert not guard.step_needs_vg(runner, filled)
    runner.input_batch.num_reqs = 0
    assert not guard.step_needs_vg(runner, filled)


def test_check_not_full_graph():
    from vllm.config import CUDAGraphMode

    with pytest.raises(RuntimeError, match="dispatched it to a FULL CUDA graph"):
        guard.check_not_full_graph(CUDAGraphMode.FULL, True)
    with pytest.raises(guard.PARAGraphModeError):
        guard.check_not_full_graph("FULL", True)
    guard.check_not_full_graph(CUDAGraphMode.FULL, False)  # decode-only step: the op has nothing to do
    guard.check_not_full_graph(CUDAGraphMode.PIECEWISE, True)
    guard.check_not_full_graph(CUDAGraphMode.NONE, True)
    guard.check_not_full_graph(None, True)


def test_current_cudagraph_mode_reads_the_forward_context(para_runtime):
    from vllm.config import CUDAGraphMode
    from vllm.forward_context import ForwardContext, override_forward_context

    assert guard.current_cudagraph_mode() is None
    ctx = ForwardContext(no_compile_layers={}, attn_metadata={}, slot_mapping={},
                         cudagraph_runtime_mode=CUDAGraphMode.FULL)
    with override_forward_context(ctx):
        assert guard.current_cudagraph_mode() is CUDAGraphMode.FULL
        with pytest.raises(guard.PARAGraphModeError):
            guard.assert_step_not_full_graph(_runner(DECODES + [ONE_TOKEN_PROMPT]), para_runtime)
        guard.assert_step_not_full_graph(_runner(DECODES), para_runtime)
        para_runtime.pages.filled.add("p")
        guard.assert_step_not_full_graph(_runner(DECODES + [ONE_TOKEN_PROMPT]), para_runtime)


# ------------------------------------------------- vLLM's real decision, guarded
@pytest.mark.parametrize(
    "mode_name, guarded",
    [("FULL_AND_PIECEWISE", "PIECEWISE"), ("FULL_DECODE_ONLY", "NONE"), ("FULL", "NONE")],
)
@pytest.mark.parametrize("prompt", [ONE_TOKEN_PROMPT, PREFIX_HIT], ids=["one-token-prompt", "prefix-hit"])
def test_uniform_batch_with_a_para_prompt_never_gets_a_full_graph(mode_name, guarded, prompt, para_runtime):
    from vllm.config import CUDAGraphMode

    dispatcher = _dispatcher(mode_name)
    # decode-only steps keep their FULL graph
    assert _decide(_runner(DECODES, dispatcher))[0] == CUDAGraphMode.FULL
    # the same step plus a PARA prompt needing its VG: vLLM alone would pick FULL ...
    runner = _runner(DECODES + [prompt], dispatcher)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(guard, "runtime_for", lambda runner: None)
        assert _decide(runner)[0] == CUDAGraphMode.FULL
    # ... the guard downgrades it
    mode, desc = _decide(runner)
    assert mode == CUDAGraphMode[guarded]
    assert desc.num_tokens >= 3 and not (mode == CUDAGraphMode.PIECEWISE and desc.uniform)
    guard.check_not_full_graph(mode, True)
    # once its vectors exist (e.g. recompute after preemption) FULL is fine again
    para_runtime.pages.filled.add(prompt[0])
    assert _decide(runner)[0] == CUDAGraphMode.FULL


def test_mixed_prefill_under_full_mode_is_not_full(para_runtime):
    from vllm.config import CUDAGraphMode

    runner = _runner(DECODES + [("long", "sql", 0, 6)], _dispatcher("FULL"))
    assert _decide(runner, [1, 1, 6])[0] == CUDAGraphMode.NONE
    runner = _runner(DECODES + [("long", None, 0, 6)], _dispatcher("FULL"))
    assert _decide(runner, [1, 1, 6])[0] == CUDAGraphMode.FULL


def test_no_para_runtime_passes_through():
    """A runner whose model has no PARA runtime (vLLM's own models) is never touched."""
    from vllm.config import CUDAGraphMode

    runner = _runner(DECODES + [ONE_TOKEN_PROMPT], _dispatcher("FULL_AND_PIECEWISE"))
    runner.model = None
    assert guard.runtime_for(runner) is None
    assert _decide(runner)[0] == CUDAGraphMode.FULL


@pytest.mark.parametrize("mode_name", ["PIECEWISE", "NONE"])
def test_engines_without_full_graphs_are_untouched(mode_name, para_runtime):
    from vllm.config import CUDAGraphMode

    runner = _runner(DECODES + [ONE_TOKEN_PROMPT], _dispatcher(mode_name))
    assert _decide(runner)[0] == CUDAGraphMode[mode_name]


def test_dummy_runs_are_untouched(para_runtime):
    """Capture asks for an exact mode (`_dummy_run` asserts it gets it) and never runs the VG."""
    from vllm.config import CUDAGraphMode
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    runner = _runner(DECODES + [ONE_TOKEN_PROMPT], _dispatcher("FULL_AND_PIECEWISE"))
    tokens = np.ones(3, dtype=np.int32)
    mode, *_ = GPUModelRunner._determine_batch_execution_and_padding(
        runner, num_tokens=3, num_reqs=3, num_scheduled_tokens_np=tokens, max_num_scheduled_tokens=1,
        force_uniform_decode=True, force_has_lora=False, force_num_active_loras=0,
    )
    assert mode == CUDAGraphMode.FULL


def test_dispatch_outside_a_guarded_step_is_unchanged():
    from vllm.config import CUDAGraphMode

    dispatcher = _dispatcher("FULL_AND_PIECEWISE")
    assert dispatcher.dispatch(num_tokens=4, uniform_decode=True)[0] == CUDAGraphMode.FULL
    assert dispatcher.dispatch(4, True, False, 0, None, None)[0] == CUDAGraphMode.FULL


def test_dispatch_inside_a_guarded_step():
    from vllm.config import CUDAGraphMode

    dispatcher = _dispatcher("FULL_AND_PIECEWISE")
    token = guard._no_full_graph.set(True)
    try:
        assert dispatcher.dispatch(num_tokens=4, uniform_decode=True)[0] == CUDAGraphMode.PIECEWISE
        # positional invalid_modes are merged, never dropped
        assert dispatcher.dispatch(4, True, False, 0, None, {CUDAGraphMode.PIECEWISE})[0] == CUDAGraphMode.NONE
        # the data-parallel re-dispatch with a synced mode below FULL still works
        assert dispatcher.dispatch(4, True, valid_modes={CUDAGraphMode.PIECEWISE})[0] == CUDAGraphMode.PIECEWISE
        with pytest.raises(guard.PARAGraphModeError, match="allows only"):
            dispatcher.dispatch(4, True, valid_modes={CUDAGraphMode.FULL})
    finally:
        guard._no_full_graph.reset(token)
    assert dispatcher.dispatch(num_tokens=4, uniform_decode=True)[0] == CUDAGraphMode.FULL
