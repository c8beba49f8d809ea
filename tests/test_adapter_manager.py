"""The API server's adapter lifecycle (api/adapter_manager.py) against a
stand-in engine client that records worker calls: all-or-nothing loads with
rollback, unloads that wait for in-flight requests, single-flight first use,
and LRU eviction that spares adapters in use. (Real-server behaviour:
tests/test_hostile_server.py.)"""

from __future__ import annotations

import asyncio

import pytest


class Workers:
    """Records `collective_rpc` calls; `fail_add` makes the add fail (as on one of several workers)."""

    def __init__(self):
        self.calls = []
        self.fail_add = False

    async def collective_rpc(self, method, args=()):
        self.calls.append((method, args))
        if method == "para_add_adapter" and self.fail_add:
            raise RuntimeError("worker 1: adapter_model.safetensors differs from the file the server validated")
        return [None, None]


@pytest.fixture()
def setup(tiny_llama, tmp_path):
    from transformers import AutoConfig

    from vllm_para.config import ModelShape
    from vllm_para.common.catalog import AdapterCatalog
    from vllm_para.api.admission import FrontendState
    from vllm_para.common.settings import PARASettings
    from vllm_para.api.adapter_manager import AdapterManager
    from testkit.tiny_models import build_random_adapter

    root = tmp_path / "dir"
    for i in range(5):
        build_random_adapter(tiny_llama, root / f"t{i}", r=4, seed=i)
    shape = ModelShape.from_hf_config(AutoConfig.from_pretrained(str(tiny_llama)))
    settings = PARASettings(adapter_dir=str(root), max_cpu_adapters=2)
    state = FrontendState(settings, AdapterCatalog(shape, max_rank=8))
    state.track_inflight = True
    workers = Workers()
    return state, workers, AdapterManager(state, workers), root


def test_failed_worker_load_rolls_back_and_publishes_nothing(setup):
    from vllm_para.api.adapter_manager import AdapterLoadError

    state, workers, manager, root = setup
    workers.fail_add = True
    with pytest.raises(AdapterLoadError, match="a worker refused it: worker 1"):
        asyncio.run(manager.load("x", str(root / "t0")))
    assert "x" not in state.registry and state.registry.num_held == 0
    (add, add_args), (undo, undo_args) = workers.calls
    assert add == "para_add_adapter" and undo == "para_remove_adapter" and undo_args == ("x", add_args[2])
    workers.fail_add = False
    asyncio.run(manager.load("x", str(root / "t0")))  # the name is free again
    assert "x" in state.registry


def test_unload_waits_for_in_flight_requests(setup):
    state, workers, manager, root = setup

    async def scenario():
        entry = await manager.load("x", str(root / "t0"))
        state.admitted("req-1", ("x", entry.version))
        await manager.unload("x")
        assert "x" not in state.registry  # no new requests from now on
        await asyncio.sleep(0.2)
        assert ("para_remove_adapter", ("x", entry.version)) not in workers.calls  # req-1 still running
        state.finished("req-1")
        await asyncio.sleep(0.2)
        assert ("para_remove_adapter", ("x", entry.version)) in workers.calls

    asyncio.run(scenario())


def test_first_use_single_flight_and_bounded_cache(setup):
    state, workers, manager, root = setup

    async def resolve(name):  # each HTTP request resolves in its own task; its pin ends with it
        return await asyncio.create_task(manager.resolve(name))

    async def scenario():
        results = await asyncio.gather(*[manager.resolve("t0") for _ in range(20)])
        assert all(results)
        assert sum(1 for m, _ in workers.calls if m == "para_add_adapter") == 1  # loaded once
        assert await resolve("t1")
        version_t0 = state.registry.get("t0").version
        state.admitted("busy", ("t0", version_t0))  # t0 (the LRU one) has a request in flight
        await asyncio.sleep(0)
        assert await resolve("t2")  # over the bound of 2: evicts t1, never t0
        assert set(manager.cached) == {"t0", "t2"} and "t1" not in state.registry
        assert not await resolve("nope") and not await resolve("../t0")
        state.finished("busy")

    asyncio.run(scenario())
