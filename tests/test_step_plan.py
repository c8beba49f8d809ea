"""Per-step planning as a function of arrays (`plan_tokens`), and the VG op finding its own
engine's side buffer and plan through vLLM's forward context (no engine started)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_para.core import vg_forward
from vllm_para.worker.slots import SlotWeights
from vllm_para.worker.step_plan import PromptSplitError, StepPlan, VGGroup, VGRow, plan_tokens
from vllm_para.worker.vector_pages import UNIT_PAGE, VectorPages


def qsl(*counts):
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)


def test_decode_only_step_plans_no_vg_and_pages_every_token():
    # three decodes: base, adapter on page 2, adapter on page 1 (vectors already computed)
    token_pages, rows = plan_tokens(qsl(1, 1, 1), np.array([9, 12, 4]), [UNIT_PAGE, 2, 1],
                                    [False, False, False], [0, 0, 0], [False, False, False])
    assert token_pages.tolist() == [0, 2, 1] and token_pages.dtype == np.int64
    assert rows == []


def test_mixed_step_plans_prompts_in_their_prefill_step():
    # decode (page 1), a 5-token prompt (page 2, last pooling), a base prompt of 3, a 4-token prompt (page 3, mean)
    token_pages, rows = plan_tokens(qsl(1, 5, 3, 4), np.array([7, 0, 0, 0]), [1, 2, UNIT_PAGE, 3],
                                    [False, True, False, True], [0, 5, 0, 4], [False, False, False, True])
    assert token_pages.tolist() == [1] + [2] * 5 + [0] * 3 + [3] * 4
    assert rows == [VGRow(1, 2, 1, 6), VGRow(3, 3, 9, 13)]


def test_prefix_cache_hit_keeps_the_last_token_in_the_step():
    # 10-token prompt, 8 tokens from the prefix cache: "last" pooling only needs token 9
    token_pages, rows = plan_tokens(qsl(2), np.array([8]), [4], [True], [10], [False])
    assert token_pages.tolist() == [4, 4]
    assert rows == [VGRow(0, 4, -8, 2)]  # pooled span in flat coordinates; its last token is index 1


def test_beam_pooling_length_shorter_than_the_scheduled_tokens():
    # a beam continuation: the VG pools the first 3 tokens of a 5-token sequence
    _, rows = plan_tokens(qsl(5), np.array([0]), [1], [True], [3], [False])
    assert rows == [VGRow(0, 1, 0, 3)]


@pytest.mark.parametrize("computed, scheduled, whole", [
    (0, 4, False),  # the last prompt token is not in this step (chunked)
    (2, 8, True),  # mean pooling needs every prompt token, two came from an earlier step
])
def test_split_prompt_is_refused(computed, scheduled, whole):
    with pytest.raises(PromptSplitError, match="not prefilled in one step"):
        plan_tokens(qsl(scheduled), np.array([computed]), [1], [True], [10], [whole])


def test_trailing_persistent_batch_entries_are_ignored():
    # query_start_loc has more entries than the step's requests (vLLM's persistent buffers)
    token_pages, rows = plan_tokens(np.array([0, 2, 3, 0, 0]), np.array([0, 5, 0, 0]), [1, 2],
                                    [True, False], [2, 0], [False, False])
    assert token_pages.tolist() == [1, 1, 2] and rows == [VGRow(0, 1, 0, 2)]


# ---------------------------------------------------------------- the op and the forward context
def _engine_state(seed, hidden=8, width=6, rank=3):
    g = torch.Generator().manual_seed(seed)
    pages = VectorPages(num_layers=2, num_pages=3, vector_width=width, max_num_tokens=16, dtype=torch.float32,
                        device="cpu")
    weights = SlotWeights(torch.randn(2, rank, hidden, generator=g), torch.randn(2, width, rank, generator=g),
                          torch.randn(2, width, generator=g), "last")
    return pages, weights


def _forward_context(side_buffers):
    from vllm.forward_context import ForwardContext

    return ForwardContext(no_compile_layers=side_buffers, attn_metadata={}, slot_mapping={})


def test_vg_op_uses_the_side_buffer_and_plan_of_the_running_engine():
    from vllm.forward_context import override_forward_context

    from vllm_para.worker.ops import SIDE_BUFFER_KEY

    engines = [_engine_state(seed) for seed in (1, 2)]
    residual = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    for pages, weights in engines:
        pages.plan = StepPlan([VGGroup(weights, slice(0, 1), [0], [5])], torch.tensor([2]), torch.tensor([4]), ["r"])

    torch.ops.vllm_para.compute_vectors(residual, engines[0][0].vectors, 1, SIDE_BUFFER_KEY)  # no forward: no-op
    assert torch.equal(engines[0][0].vectors, torch.ones_like(engines[0][0].vectors))

    for pages, weights in engines:
        with override_forward_context(_forward_context({SIDE_BUFFER_KEY: pages})):
            torch.ops.vllm_para.compute_vectors(residual, pages.vectors, 1, SIDE_BUFFER_KEY)
        want = vg_forward(residual[4:5], weights.down[1], weights.up[1], weights.up_bias[1])
        torch.testing.assert_close(pages.vectors[1, 2:3], want)
        assert torch.equal(pages.vectors[0], torch.ones_like(pages.vectors[0]))  # only the called layer
        assert torch.equal(pages.vectors[1, :2], torch.ones(2, 6))  # only the planned page
    assert not torch.equal(engines[0][0].vectors, engines[1][0].vectors)

    pages, _ = engines[0]
    pages.plan = None  # between forwards (dummy and profile runs): nothing runs
    before = pages.vectors.clone()
    with override_forward_context(_forward_context({SIDE_BUFFER_KEY: pages})):
        torch.ops.vllm_para.compute_vectors(residual * 2, pages.vectors, 1, SIDE_BUFFER_KEY)
    assert torch.equal(pages.vectors, before)


def test_vg_op_groups_share_one_gather_and_one_write():
    """Three prompts, two adapters (one pooling "mean"), rows in group order: every page gets
    its own adapter's VG of its own prompt, as `vg_forward` computes it row by row."""
    from vllm.forward_context import override_forward_context

    from vllm_para.core import pool_mean
    from vllm_para.worker.ops import SIDE_BUFFER_KEY

    pages, last_w = _engine_state(4)
    _, mean_w = _engine_state(5)
    mean_w = SlotWeights(mean_w.down, mean_w.up, mean_w.up_bias, "mean")
    residual = torch.randn(12, 8, generator=torch.Generator().manual_seed(6))
    # flat batch: prompt A tokens 0..3 (last), prompt B 4..8 (mean), prompt C 9..11 (last)
    pages.plan = StepPlan([VGGroup(last_w, slice(0, 2), [0, 9], [4, 12]), VGGroup(mean_w, slice(2, 3), [4], [9])],
                          pages=torch.tensor([0, 2, 1]), last_index=torch.tensor([3, 11, 8]),
                          pending_fills=["A", "C", "B"])
    with override_forward_context(_forward_context({SIDE_BUFFER_KEY: pages})):
        torch.ops.vllm_para.compute_vectors(residual, pages.vectors, 0, SIDE_BUFFER_KEY)
    for page, w, pooled in ((0, last_w, residual[3:4]), (2, last_w, residual[11:12]),
                            (1, mean_w, pool_mean(residual, 4, 9)[None])):
        want = vg_forward(pooled, w.down[0], w.up[0], w.up_bias[0])
        torch.testing.assert_close(pages.vectors[0, page:page + 1], want)
    assert torch.equal(pages.vectors[1], torch.ones_like(pages.vectors[1]))


def test_no_module_level_step_state():
    """The plan is the engine's (its side buffer's), not a module global."""
    from vllm_para.worker import ops, runtime, step_plan

    for module in (ops, runtime, step_plan):
        for name, value in vars(module).items():
            assert not isinstance(value, (StepPlan, VectorPages)), f"{module.__name__}.{name}"


def _runner(reqs: list[tuple[str, str | None]], query_lens: list[int], computed: list[int]):
    """A stand-in for vLLM's model runner: just the fields `PARARuntime.plan_step` reads."""
    from types import SimpleNamespace

    import numpy as np

    qsl = np.zeros(len(reqs) + 1, dtype=np.int32)
    qsl[1:] = np.cumsum(query_lens)
    requests = {rid: SimpleNamespace(sampling_params=SimpleNamespace(
        extra_args={"para_adapter": name, "para_prompt_len": 4} if name else None)) for rid, name in reqs}
    batch = SimpleNamespace(num_reqs=len(reqs), req_ids=[rid for rid, _ in reqs],
                            num_computed_tokens_cpu=np.array(computed, dtype=np.int32))
    return SimpleNamespace(input_batch=batch, query_start_loc=SimpleNamespace(np=qsl), requests=requests)


def test_a_settled_decode_batch_is_not_planned_again():
    """Decode steps with the same batch as a step that ran no VG reuse its token pages: no host work."""
    from types import SimpleNamespace

    from vllm_para.worker.runtime import PARARuntime
    from vllm_para.worker.vector_pages import VectorPages

    pages = VectorPages(num_layers=1, num_pages=4, vector_width=8, max_num_tokens=16, dtype=torch.float32,
                        device="cpu")
    rt = PARARuntime(registry=SimpleNamespace(), slots=SimpleNamespace(), pages=pages)
    page_b = pages.allocate("b")
    pages.commit_filled(["b"])  # b's vectors were computed at its prefill
    decode = _runner([("a", None), ("b", "tenant")], [1, 1], [10, 12])
    assert not rt.plan_step(decode) and rt.plans_reused == 0
    assert pages.token_pages[:3].tolist() == [0, page_b, 0]

    pages.token_pages[0] = 3  # (a marker: a reused plan does not rewrite the buffer)
    assert not rt.plan_step(decode) and rt.plans_reused == 1
    assert pages.token_pages[0] == 3

    # any change of the batch (a request joins, leaves, or is reordered, or a prompt is scheduled) re-plans
    page_c = pages.allocate("c")
    pages.commit_filled(["c"])
    grown = _runner([("a", None), ("b", "tenant"), ("c", "tenant")], [1, 1, 1], [11, 13, 20])
    assert not rt.plan_step(grown) and rt.plans_reused == 1
    assert pages.token_pages[:4].tolist() == [0, page_b, page_c, 0]
    reordered = _runner([("c", "tenant"), ("a", None), ("b", "tenant")], [1, 1, 1], [21, 12, 14])
    assert not rt.plan_step(reordered) and rt.plans_reused == 1
    assert pages.token_pages[:3].tolist() == [page_c, 0, page_b]
    prefill = _runner([("c", "tenant"), ("a", None), ("b", "tenant")], [1, 5, 1], [22, 0, 15])
    assert not rt.plan_step(prefill) and rt.plans_reused == 1
    assert pages.token_pages[:7].tolist() == [page_c, 0, 0, 0, 0, 0, page_b]


def test_step_planner_and_graph_guard_cannot_disagree():
    """`PARARuntime.plan_step` and `graph_guard.step_needs_vg` apply one rule
    (`common.request.needs_vg`): over random batches (adapters or none, prompts or
    decodes, pages filled before or not), the guard says "this step computes vectors"
    exactly when the planner fills pages in it. The adapters here are static ((IA)^3),
    so this also checks their pages are written by the planner, before the forward."""
    import random
    from types import SimpleNamespace

    from vllm_para.worker import graph_guard
    from vllm_para.worker.runtime import PARARuntime

    layers, width = 2, 6
    bias = {name: torch.full((layers, width), float(k + 2)) for k, name in enumerate(["sql", "qa"])}

    def acquire(keys):
        return {key: SlotWeights(None, None, bias[key[0]], "last", True) for key in keys}

    registry = SimpleNamespace(find=lambda name, version: SimpleNamespace(
        version=version, config=SimpleNamespace(pooling="last")))
    rng = random.Random(0)
    for trial in range(200):
        pages = VectorPages(num_layers=layers, num_pages=16, vector_width=width, max_num_tokens=64,
                            dtype=torch.float32, device="cpu")
        rt = PARARuntime(registry=registry, slots=SimpleNamespace(acquire=acquire), pages=pages)
        reqs, query_lens, computed, filled_before = [], [], [], set()
        for i in range(rng.randint(1, 6)):
            rid, name = f"r{trial}-{i}", rng.choice([None, "sql", "qa"])
            decoding = rng.random() < 0.5
            reqs.append((rid, name))
            query_lens.append(1 if decoding else 4)
            computed.append(rng.randint(4, 20) if decoding else 0)
            if name and (decoding or rng.random() < 0.2):  # decoding, or preempted and recomputed
                pages.allocate(rid)
                pages.commit_filled([rid])
                filled_before.add(rid)
        runner = _runner(reqs, query_lens, computed)
        guard_says = graph_guard.step_needs_vg(runner, pages.filled)
        plan = rt.plan_step(runner)
        assert guard_says == bool(plan.pending_fills), (reqs, filled_before)
        assert not plan  # static adapters: nothing is left for the VG op inside the forward
        for rid, name in reqs:
            if rid in plan.pending_fills:
                assert torch.equal(pages.vectors[:, pages.page_of[rid]], bias[name])
