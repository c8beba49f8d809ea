"""The PARA request codec (vllm_para/common/request.py): one reader, one writer."""

from __future__ import annotations

import pytest

from vllm_para.common.request import (
    ADAPTER_KEY,
    CACHE_KEY,
    POOL_LEN_KEY,
    VERSION_KEY,
    PARARequest,
    PooledPrefix,
    needs_vg,
    prefix_cache_key,
)


@pytest.mark.parametrize("extra", [None, {}, {ADAPTER_KEY: None}, {ADAPTER_KEY: ""}, {"other": 1}])
def test_base_requests(extra):
    para = PARARequest.from_extra(extra)
    assert para == PARARequest() and not para.selects_adapter
    assert not needs_vg(para, already_filled=False)


def test_round_trip_keeps_other_entries():
    written = PARARequest(adapter="sql", version=3, pool_len=7, cache_key="k").written({"other": 1, ADAPTER_KEY: "x"})
    assert written == {"other": 1, ADAPTER_KEY: "sql", VERSION_KEY: 3, POOL_LEN_KEY: 7, CACHE_KEY: "k"}
    assert PARARequest.from_extra(written) == PARARequest("sql", 3, 7, "k")
    # None fields leave what the dict has; the input dict is never mutated
    extra = {ADAPTER_KEY: "sql"}
    assert PARARequest(adapter="sql").written(extra) == extra and extra == {ADAPTER_KEY: "sql"}


def test_of_reads_sampling_params():
    from vllm import SamplingParams

    assert PARARequest.of(None) == PARARequest()
    assert PARARequest.of(SamplingParams()) == PARARequest()
    assert PARARequest.of(SamplingParams(extra_args={ADAPTER_KEY: "qa"})).adapter == "qa"


def test_beam_request_carries_the_trusted_marker():
    written = PARARequest.beam("qa", 12).written(None)
    assert isinstance(written[POOL_LEN_KEY], PooledPrefix) and written[POOL_LEN_KEY] == 12
    assert written[ADAPTER_KEY] == "qa"


def test_needs_vg():
    para = PARARequest(adapter="sql", version=1, pool_len=4)
    assert needs_vg(para, already_filled=False)
    assert not needs_vg(para, already_filled=True)  # preempted: keeps its vectors


def test_prefix_cache_key_depends_on_load_and_pooled_tokens():
    key = prefix_cache_key("sql", 1, "d1", [1, 2, 3, 4], 4)
    assert key == prefix_cache_key("sql", 1, "d1", [1, 2, 3, 4], 4)
    assert key.startswith("sql@1:d1:")
    others = {prefix_cache_key("sql", 2, "d1", [1, 2, 3, 4], 4), prefix_cache_key("sql", 1, "d2", [1, 2, 3, 4], 4),
              prefix_cache_key("qa", 1, "d1", [1, 2, 3, 4], 4), prefix_cache_key("sql", 1, "d1", [1, 2, 3, 5], 4),
              prefix_cache_key("sql", 1, "d1", [1, 2, 3, 4], 3)}
    assert key not in others and len(others) == 5
    # tokens past the pooled length do not change the key (beam search pools the original prompt)
    assert prefix_cache_key("sql", 1, "d1", [1, 2, 3, 9], 3) == prefix_cache_key("sql", 1, "d1", [1, 2, 3, 4], 3)
