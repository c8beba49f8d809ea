"""Per-worker PARA state: the adapter registry, the VG slots, the vector pages,
and the planning of each step from the model runner's batch.

One model per worker process, so one `PARARuntime` per process, installed by
the PARA model at construction and used by the runner hooks.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from ..config import ModelShape
from .adapter_slots import AdapterRegistry, AdapterSlots
from .settings import REQUEST_ADAPTER_KEY, REQUEST_POOL_LEN_KEY, REQUEST_VERSION_KEY, PARASettings
from .step_plan import StepPlan, VGGroup
from .tp_layout import RankLayout
from .vector_pages import UNIT_PAGE, VectorPages

logger = logging.getLogger("vllm.para")  # under vLLM's logger: same handlers and level

_runtime: "PARARuntime | None" = None


def get_runtime() -> "PARARuntime | None":
    return _runtime


class PARARuntime:
    def __init__(self, registry: AdapterRegistry, slots: AdapterSlots, pages: VectorPages) -> None:
        self.registry = registry
        self.slots = slots
        self.pages = pages

    # ------------------------------------------------------------------ requests
    def release(self, req_ids) -> None:
        for rid in req_ids:
            self.pages.release(rid)

    def stats(self) -> dict[str, Any]:
        return {
            "pages_in_use": self.pages.in_use,
            "pages_capacity": self.pages.capacity,
            "buffer_bytes": self.pages.bytes_total,
            "bytes_per_sequence": self.pages.bytes_per_sequence,
            "adapters": self.registry.names(),
            "slot_loads": self.slots.loads,
        }

    # ---------------------------------------------------------------- each step
    def plan_step(self, runner) -> StepPlan:
        """Assign pages to this step's tokens and list the prompts whose vectors
        must be computed now. Called right before the model forward."""
        batch = runner.input_batch
        num_reqs = batch.num_reqs
        qsl = runner.query_start_loc.np
        num_tokens = int(qsl[num_reqs])
        token_pages = np.zeros(num_tokens, dtype=np.int64)
        todo: dict[tuple[str, int], list[tuple[int, int, int]]] = defaultdict(list)  # adapter -> (page, start, end)

        for i, rid in enumerate(batch.req_ids[:num_reqs]):
            params = runner.requests[rid].sampling_params
            extra = (params.extra_args or {}) if params is not None else {}
            name = extra.get(REQUEST_ADAPTER_KEY)
            if not name:
                continue  # unit page: exactly the base model
            start, end = int(qsl[i]), int(qsl[i + 1])
            page = self.pages.allocate(rid)
            token_pages[start:end] = page
            if rid in self.pages.filled:
                continue  # vectors of this prompt already computed (decode, or recompute after preemption)
            computed = int(batch.num_computed_tokens_cpu[i])
            prompt_len = int(extra.get(REQUEST_POOL_LEN_KEY) or batch.num_prompt_tokens[i])
            entry = self.registry.get(name, extra.get(REQUEST_VERSION_KEY))
            pooling = entry.config.pooling
            first_needed = 0 if pooling == "mean" else prompt_len - 1
            if computed > first_needed or computed + (end - start) < prompt_len:
                raise RuntimeError(
                    f"PARA request {rid}: its prompt (tokens 0..{prompt_len - 1}) is not prefilled in one "
                    f"step (computed={computed}, scheduled={end - start}, pooling={pooling}). PARA needs "
                    "chunked prefill off and prefix-cache keys that include the adapter and prompt."
                )
            todo[(name, entry.version)].append((page, start - computed, start - computed + prompt_len))
            self.pages.filled.add(rid)

        device = self.pages.token_pages.device
        self.pages.token_pages[num_tokens:].zero_()
        self.pages.token_pages[:num_tokens].copy_(torch.from_numpy(token_pages), non_blocking=True)
        if not todo:
            return StepPlan()
        weights = self.slots.acquire(set(todo))
        groups = []
        for key, rows in todo.items():
            pages, starts, ends = (list(col) for col in zip(*rows))
            groups.append(
                VGGroup(
                    weights=weights[key],
                    pages=torch.tensor(pages, dtype=torch.long).to(device, non_blocking=True),
                    starts=starts,
                    ends=ends,
                    last_index=torch.tensor([e - 1 for e in ends], dtype=torch.long).to(device, non_blocking=True),
                )
            )
        return StepPlan(groups)


def install_runtime(model: torch.nn.Module, vllm_config, settings: PARASettings) -> PARARuntime:
    """Build the side buffer and slots for `model` and switch its layers to PARA."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    global _runtime
    hf_config = vllm_config.model_config.hf_config
    shape = ModelShape.from_hf_config(hf_config)
    head_dim = shape.q_size // hf_config.num_attention_heads
    layout = RankLayout.build(shape, head_dim, get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size())
    device = torch.empty(0).device  # vLLM builds the model under its target-device context
    sched = vllm_config.scheduler_config
    pages = VectorPages(
        num_layers=shape.num_hidden_layers,
        num_pages=2 * sched.max_num_seqs,  # running + preempted sequences
        vector_width=layout.width,
        max_num_tokens=sched.max_num_batched_tokens,
        dtype=vllm_config.model_config.dtype,
        device=device,
    )
    model.para_pages = pages
    model.para_convert_layers(pages, layout)
    # The frontend validated every tensor before the engine started; slots re-check on load.
    registry = AdapterRegistry(shape, settings.modules, check_weights=False)
    slots = AdapterSlots(registry, settings.max_adapters, settings.max_rank, layout.width, layout.shard_index, device)
    _runtime = PARARuntime(registry, slots, pages)
    logger.info(
        "PARA enabled: %d adapters registered %s; side buffer %d bytes (%d pages x %d bytes per sequence, "
        "%d layers x %d values); VG slots %d x rank %d = %d bytes",
        len(registry.names()), registry.names(), pages.bytes_total, pages.capacity, pages.bytes_per_sequence,
        shape.num_hidden_layers, layout.width, settings.max_adapters, settings.max_rank, slots.bytes_total,
    )
    return _runtime
