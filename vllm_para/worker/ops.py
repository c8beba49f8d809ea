"""The `vllm_para::compute_vectors` op: run the VG for this step's prompts.

Registered as a torch custom op so torch.compile treats it as opaque and
calls it eagerly each step (on GPU it is also a CUDA-graph break point); it
mutates the side buffer in place and returns nothing, so its output has no
data-dependent shape. With no prompt in the step (every decode step) it
returns at once: decode never runs the VG. Run eagerly, the layer wrapper does
not even call it in such a step (`layers.ResidualTap`); a compiled graph holds
the call in every step (on GPU, decode steps replay FULL graphs captured
without it: `graph_guard.py`). A static adapter's prompts ((IA)^3:
the vector does not depend on the prompt) never reach it: the runtime writes
their pages once, before the forward (`PARARuntime.plan_step`).

Like vLLM's attention op, it finds its engine's state by name in the forward
context (`static_forward_context`, which belongs to the engine's
`VllmConfig`): the side buffer registered there under `SIDE_BUFFER_KEY`
carries the current step's plan.

Runs in: every worker process, inside the forward.
"""

from __future__ import annotations

import torch
from vllm.forward_context import get_forward_context, is_forward_context_available

from vllm_para.core import pool_last, pool_prompts, vg_forward

_LIB = torch.library.Library("vllm_para", "FRAGMENT")  # lives as long as this module
OP_NAME = "vllm_para::compute_vectors"
SIDE_BUFFER_KEY = "vllm_para.side_buffer"  # in vllm_config.compilation_config.static_forward_context


def current_side_buffer(key: str):
    """The side buffer registered under `key` for the forward that runs now (None outside one)."""
    if not is_forward_context_available():
        return None
    return get_forward_context().no_compile_layers.get(key)


def compute_vectors(residual: torch.Tensor, vectors: torch.Tensor, layer: int, key: str) -> None:
    """Pool `residual` (the stream entering `layer`) per prompt, run each
    adapter's VG, write the results into `vectors[layer, page]`."""
    pages = current_side_buffer(key)
    plan = pages.plan if pages is not None else None
    if not plan:
        return
    last = pool_last(residual, plan.last_index)  # every row's final token, one gather
    outs = []
    for group in plan.groups:
        w = group.weights
        if w.pooling == "last":
            pooled = last[group.rows]
        else:
            pooled = pool_prompts(residual, group.starts, group.ends, w.pooling)
        outs.append(vg_forward(pooled, w.down[layer], w.up[layer], w.up_bias[layer]))
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    vectors[layer].index_copy_(0, plan.pages, out.to(vectors.dtype))


def _fake(residual: torch.Tensor, vectors: torch.Tensor, layer: int, key: str) -> None:
    return None


def _register() -> None:
    from vllm.compilation.breakable_cudagraph import eager_break_during_capture
    from vllm.utils.torch_utils import direct_register_custom_op

    direct_register_custom_op(
        "compute_vectors",
        eager_break_during_capture(compute_vectors),
        mutates_args=["vectors"],
        fake_impl=_fake,
        target_lib=_LIB,
    )


_register()
