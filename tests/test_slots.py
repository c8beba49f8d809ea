"""Adapter registry and device slots without an engine: registration reads and
validates once into host memory (files may vanish afterwards), max_rank is
enforced at registration, slots swap least-recently-used through vLLM's LRU
cache, and a step needing more adapters than slots gets overflow copies."""

from __future__ import annotations

import shutil

import pytest
import torch


@pytest.fixture()
def registry(tiny_llama, tmp_path):
    from transformers import AutoConfig

    from vllm_para.config import ModelShape
    from vllm_para.worker.host_store import HostStore
    from vllm_para.worker.runtime import host_weights_preparer
    from vllm_para.worker.tp_layout import RankLayout
    from testkit.tiny_models import build_random_adapter

    shape = ModelShape.from_hf_config(AutoConfig.from_pretrained(str(tiny_llama)))
    layout = RankLayout.build(shape, 64, 0, 1)
    for i, name in enumerate("abc"):
        build_random_adapter(tiny_llama, tmp_path / name, r=4 + i, seed=i)
    reg = HostStore(shape, max_rank=8, prepare_weights=host_weights_preparer(layout, (0, 2), pin=False))
    for name in "abc":
        reg.add(name, str(tmp_path / name))
    reg.layout = layout
    return reg


def _slots(registry, n=2):
    from vllm_para.worker.slots import AdapterSlots

    return AdapterSlots(registry, n, 8, registry.layout.width, "cpu", num_layers=2)


def _key(registry, name):
    return (name, registry.get(name).version)


def test_files_read_once_then_never(registry, tmp_path):
    slots = _slots(registry)
    for name in "abc":
        shutil.rmtree(tmp_path / name)  # registration kept everything in host memory
    got = slots.acquire({_key(registry, "a")})[_key(registry, "a")]
    host = registry.get("a").weights
    assert torch.equal(got.down, host.down) and torch.equal(got.up, host.up) and torch.equal(got.up_bias, host.up_bias)
    assert all(got.up[layer].t().is_contiguous() for layer in range(2))  # the VG reads one contiguous r x V block
    assert registry.host_bytes == sum(registry.get(n).host_bytes for n in "abc") > 0
    assert registry.num_held == 3


def test_rank_above_max_refused_at_registration(registry, tiny_llama, tmp_path):
    from vllm_para.common.catalog import AdapterRejected
    from testkit.tiny_models import build_random_adapter

    build_random_adapter(tiny_llama, tmp_path / "big", r=16)
    with pytest.raises(AdapterRejected, match="r=16 > max_rank=8"):
        registry.add("big", str(tmp_path / "big"))
    assert "big" not in registry
    registry.add("big2", str(tmp_path / "a"))  # the name reservation was released on failure too


def test_lru_swaps_and_overflow(registry):
    slots = _slots(registry, n=2)
    a, b, c = (_key(registry, n) for n in "abc")
    slots.acquire({a})
    slots.acquire({a, b})
    assert slots.loads == 2 and slots.num_resident == 2
    slots.acquire({a})  # b is now the least recently used
    slots.acquire({c})
    assert slots.loads == 3 and set(slots._resident.cache) == {a, c}
    out = slots.acquire({a, b, c})  # 3 adapters, 2 slots: one temporary copy, nothing fails
    assert set(out) == {a, b, c} and slots.num_resident == 2
    for key in (a, b, c):
        assert torch.equal(out[key].up_bias, registry.find(*key).weights.up_bias)
    slots.evict(a)
    assert a not in slots._resident.cache and len(slots._resident.free) >= 1


def test_staged_load_publish_abandon_retire(registry, tmp_path):
    entry = registry.load("d", str(tmp_path / "a"))
    assert "d" not in registry and registry.find("d", entry.version) is entry  # validated, not selectable
    with pytest.raises(ValueError, match="already loaded"):
        registry.load("d", str(tmp_path / "a"))  # a load in progress reserves the name
    registry.abandon(entry)
    assert registry.find("d", entry.version) is None
    entry = registry.load("d", str(tmp_path / "a"))
    registry.publish(entry)
    assert "d" in registry and registry.get("d").digest
    registry.remove("d")
    assert "d" not in registry and registry.find("d", entry.version) is entry  # in-flight requests still find it
    registry.retire("d", entry.version)
    assert registry.find("d", entry.version) is None
