"""Per-worker PARA state: the adapter registry, the VG slots, the vector pages,
and the planning of each step from the model runner's batch.

The `PARARuntime` belongs to the model it was built for (`model.para_runtime`);
the runner hooks and the worker extension reach it through the runner's model,
so two engines never share it.

Nothing here may raise inside a forward because of what a request carries:
admission (api/admission.py) validated every request field, the scheduler
(enginecore/scheduler.py) admits PARA requests only while a page is free, and
adapter weights are in host memory from registration on. What is left are
invariant checks: they fail loudly with a message naming the broken invariant.

Runs in: every worker process.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import torch

from vllm_para.adapter import AdapterFiles
from vllm_para.common.request import PARARequest, needs_vg
from vllm_para.config import WHOLE_PROMPT_POOLINGS, ModelShape, PARAConfig
from vllm_para.core import VGWeights, expand_to_all_targets
from vllm_para.common.settings import (
    PARASettings,
    page_capacity,
)
from vllm_para.worker.host_store import HostStore
from vllm_para.worker.layers import WRAPPED, local_layers, wrap_layers
from vllm_para.worker.ops import SIDE_BUFFER_KEY
from vllm_para.worker.slots import AdapterSlots
from vllm_para.worker.step_plan import StepPlan, VGGroup, plan_tokens
from vllm_para.worker.tp_layout import RankLayout
from vllm_para.worker.vector_pages import UNIT_PAGE, VectorPages

logger = logging.getLogger("vllm.para")  # under vLLM's logger: same handlers and level


def runtime_of(runner) -> "PARARuntime | None":
    """The PARA runtime of a model runner's model (None: not a PARA engine, or no model yet)."""
    model = getattr(runner, "model", None)
    if model is None:
        return None
    if hasattr(model, "unwrap"):  # CUDA-graph wrapper
        model = model.unwrap()
    return getattr(model, "para_runtime", None)


class PARARuntime:
    def __init__(self, registry: HostStore, slots: AdapterSlots, pages: VectorPages,
                 layers: dict[str, Any] | None = None) -> None:
        self.registry = registry
        self.slots = slots
        self.pages = pages
        self.layers = layers or {}  # what was wrapped (reported by stats)
        self.invariant_errors = 0
        # (request ids, query_start_loc) of the last step that ran no VG: a step with the same
        # batch has the same token pages (a page changes only when its request leaves the batch),
        # so it needs no planning at all (most decode steps).
        self._settled_batch: tuple | None = None
        self.plans_reused = 0

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
            "adapters_by_kind": self.registry.kinds(),
            "slot_loads": self.slots.loads,
            "slots_resident": self.slots.num_resident,
            "adapter_host_bytes": self.registry.host_bytes,
            "adapters_in_host_memory": self.registry.num_held,
            "adapter_device_bytes": self.slots.bytes_total,
            "layers": self.layers,
            "invariant_errors": self.invariant_errors,
            "plans_reused": self.plans_reused,
        }

    # ---------------------------------------------------------------- adapters
    def add_adapter(self, name: str, files: AdapterFiles, version: int) -> int:
        """Validate `files` (the bytes the API server read) and keep (name, version) in host
        memory; selectable at once. The API server is authoritative for names: a newer version
        of a name that was unloaded there (and still drains here) replaces it as the active one."""
        return self.registry.add(name, files.directory, version, files.digest, replace=True, files=files).version

    def remove_adapter(self, name: str, version: int) -> None:
        """Forget exactly (name, version): the API server calls this once no request uses
        it, or to roll back a load this worker may not have completed."""
        self.registry.retire(name, version)
        self.slots.evict((name, version))

    # ---------------------------------------------------------------- each step
    def plan_step(self, runner) -> StepPlan:
        """Assign pages to this step's tokens and list the prompts whose vectors
        must be computed now (`plan_tokens`). Called right before the model forward."""
        batch = runner.input_batch
        num_reqs = batch.num_reqs
        qsl = runner.query_start_loc.np
        settled = (tuple(batch.req_ids[:num_reqs]), qsl[: num_reqs + 1].tobytes())
        if settled == self._settled_batch:  # token_pages already hold this batch's pages
            self.plans_reused += 1
            return StepPlan()
        self._settled_batch = None  # this step rewrites token_pages: the old batch's pages are gone
        pages, needs_vg_now, prompt_lens, whole, keys = [], [], [], [], []
        filled = self.pages.filled
        for rid in batch.req_ids[:num_reqs]:
            para = PARARequest.of(runner.requests[rid].sampling_params)
            name = para.adapter
            entry = None
            if needs_vg(para, rid in filled):  # the rule graph_guard.step_needs_vg applies too
                # Admission set version and pooled length; the frontend retires a version only after its last request.
                entry = self.registry.find(name, para.version)
                if entry is None:
                    # Cannot happen (the API server retires a version after its last request);
                    # if it does, one request is wrong, loudly, and the engine stays up.
                    self.invariant_errors += 1
                    logger.error(
                        "PARA invariant broken: request %s uses adapter %r version %r, which this worker does not "
                        "hold; it runs without PARA vectors.", rid, name, para.version,
                    )
                    name = None
            pages.append(self.pages.allocate(rid) if name else UNIT_PAGE)
            needs_vg_now.append(entry is not None)
            prompt_lens.append(para.pool_len if entry is not None else 0)
            whole.append(entry is not None and entry.config.pooling in WHOLE_PROMPT_POOLINGS)
            keys.append((name, entry.version) if entry is not None else None)

        token_pages, rows = plan_tokens(qsl, batch.num_computed_tokens_cpu, pages, needs_vg_now, prompt_lens, whole)
        num_tokens = len(token_pages)
        self.pages.token_pages[num_tokens:].zero_()
        self.pages.token_pages[:num_tokens].copy_(torch.from_numpy(token_pages), non_blocking=True)
        if not rows:
            self._settled_batch = settled
            return StepPlan()
        by_adapter: dict[tuple[str, int], list] = defaultdict(list)
        for row in rows:
            by_adapter[keys[row.request]].append(row)
        weights = self.slots.acquire(set(by_adapter))
        device = self.pages.token_pages.device
        groups, ordered, static_fills = [], [], []
        for key, group in by_adapter.items():
            if weights[key].static:
                # (IA)^3: the vector does not depend on the prompt. Its pages are written here, once,
                # before the forward: the VG op never sees these rows (no per-layer work at prefill).
                fill = torch.tensor([r.page for r in group], dtype=torch.long).to(device, non_blocking=True)
                self.pages.fill_pages(fill, weights[key].up_bias)
                static_fills.extend(batch.req_ids[r.request] for r in group)
                continue
            first = len(ordered)
            ordered.extend(group)
            groups.append(VGGroup(weights[key], slice(first, len(ordered)),
                                  [r.start for r in group], [r.end for r in group]))
        pending = [batch.req_ids[r.request] for r in ordered] + static_fills
        if not ordered:
            return StepPlan(pending_fills=pending)
        pages = torch.tensor([r.page for r in ordered], dtype=torch.long).to(device, non_blocking=True)
        last = torch.tensor([r.end - 1 for r in ordered], dtype=torch.long).to(device, non_blocking=True)
        return StepPlan(groups, pages, last, pending)


def host_weights_preparer(layout: RankLayout, layers: tuple[int, int], pin: bool):
    """Registration-time transform of an adapter's VG weights into what a slot
    holds: all five targets (missing ones = exact ones), this pipeline rank's
    layers, this tensor-parallel rank's slice, float32, pinned for
    asynchronous copies on GPU."""
    first, end = layers

    def prepare(weights: VGWeights, config: PARAConfig) -> VGWeights:
        full = expand_to_all_targets(weights, config)
        full = VGWeights(full.down[first:end], full.up[first:end], full.up_bias[first:end])
        up, bias = full.up, full.up_bias
        if layout.shard_index is not None:
            index = layout.shard_index.cpu()
            up, bias = up.index_select(1, index), bias.index_select(1, index)
        out = VGWeights(*(t.float().contiguous() for t in (full.down, up, bias)))
        if pin:
            out = VGWeights(*(t.pin_memory() for t in (out.down, out.up, out.up_bias)))
        return out

    return prepare


def install_runtime(model: torch.nn.Module, vllm_config, settings: PARASettings, device) -> PARARuntime:
    """After vLLM loaded `model`: build its side buffer, slots and registry and
    wrap its decoder layers' PARA modules (worker/layers.py)."""
    from vllm.distributed import (
        get_tensor_model_parallel_rank,
        get_tensor_model_parallel_world_size,
    )

    hf_config = vllm_config.model_config.hf_config
    text_config = getattr(hf_config, "text_config", None) or hf_config
    shape = ModelShape.from_hf_config(hf_config)
    head_dim = shape.q_size // text_config.num_attention_heads
    layout = RankLayout.build(shape, head_dim, get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size())
    first, end, _ = local_layers(model)
    sched = vllm_config.scheduler_config
    pages = VectorPages(
        num_layers=end - first,  # this pipeline rank's layers only
        num_pages=page_capacity(settings, sched.max_num_seqs),  # = what the scheduler admits
        vector_width=layout.width,
        max_num_tokens=sched.max_num_batched_tokens,
        dtype=vllm_config.model_config.dtype,
        device=device,
    )
    model.para_pages = pages
    # The VG op finds this engine's side buffer (and the step's plan on it) by name in the
    # forward context, as vLLM's attention op finds its layer: engine state, not module state.
    forward_context = vllm_config.compilation_config.static_forward_context
    if SIDE_BUFFER_KEY in forward_context:
        raise RuntimeError(f"{SIDE_BUFFER_KEY!r} is already in this engine's forward context: PARA installed twice?")
    forward_context[SIDE_BUFFER_KEY] = pages
    wrap_layers(model, pages, layout.qkv_width, layout.width)
    # Read and validated once here; slot fills copy from this host copy, never from disk.
    prepare = host_weights_preparer(layout, (first, end), pin=torch.device(device).type == "cuda")
    registry = HostStore(shape, settings.modules, max_rank=settings.max_rank, prepare_weights=prepare,
                       read_timeout_s=settings.load_timeout_s)
    slots = AdapterSlots(registry, settings.max_adapters, settings.max_rank, layout.width, device,
                         num_layers=end - first)
    _, _, decoder_layers = local_layers(model)
    wrapped = {
        "first": first, "end": end, "wrapped": list(WRAPPED),
        "decoder_layer_classes": sorted({f"{type(layer).__module__}.{type(layer).__name__}"
                                         for layer in decoder_layers[first:end]}),
    }
    runtime = PARARuntime(registry, slots, pages, wrapped)
    model.para_runtime = runtime
    logger.info(
        "PARA enabled: %d adapters registered %s (host memory %d bytes); layers %d..%d wrapped; side buffer %d "
        "bytes (%d pages x %d bytes per sequence, %d layers x %d values); VG slots %d x rank %d = %d bytes",
        len(registry.names()), registry.names(), registry.host_bytes, first, end - 1, pages.bytes_total,
        pages.capacity, pages.bytes_per_sequence, end - first, layout.width, settings.max_adapters,
        settings.max_rank, slots.bytes_total,
    )
    return runtime
