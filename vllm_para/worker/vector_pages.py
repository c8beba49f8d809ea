"""The side buffer: one page of PARA vectors per running sequence.

`vectors[layer, page]` holds that sequence's vectors for one layer, laid out
as this tensor-parallel rank's slice of [q | k | v | g | u], i.e. exactly the
layout of the rank's `qkv_proj` output followed by its `gate_up_proj` output.
Page 0 is all ones (requests without an adapter); pages 1.. are handed out
from a free list, filled at prefill, read at every decode step, and returned
when the request finishes or is aborted. A preempted request keeps its page:
its vectors depend only on its prompt, so recompute reuses them unchanged.

Runs in: every worker process.
"""

from __future__ import annotations

import torch

UNIT_PAGE = 0


class PagesExhaustedError(RuntimeError):
    pass


class VectorPages(torch.nn.Module):
    def __init__(
        self,
        num_layers: int,
        num_pages: int,
        vector_width: int,
        max_num_tokens: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.vector_width = vector_width
        # Non-persistent buffers: not part of the checkpoint, moved with the model.
        self.register_buffer(
            "vectors", torch.ones(num_layers, num_pages + 1, vector_width, dtype=dtype, device=device),
            persistent=False,
        )
        # Page of every token of the current step, written by the runner before the forward.
        self.register_buffer(
            "token_pages", torch.zeros(max_num_tokens, dtype=torch.long, device=device), persistent=False
        )
        self._free: list[int] = list(range(num_pages, 0, -1))  # pop() hands out page 1 first
        self.page_of: dict[str, int] = {}
        self.filled: set[str] = set()
        # The StepPlan (step_plan.py) of the forward that runs now: set by the runner hook around it.
        self.plan = None

    # ------------------------------------------------------------ accounting
    @property
    def capacity(self) -> int:
        return self.vectors.shape[1] - 1

    @property
    def in_use(self) -> int:
        return len(self.page_of)

    @property
    def bytes_total(self) -> int:
        return self.vectors.numel() * self.vectors.element_size()

    @property
    def bytes_per_sequence(self) -> int:
        return self.num_layers * self.vector_width * self.vectors.element_size()

    def allocate(self, req_id: str) -> int:
        page = self.page_of.get(req_id)
        if page is not None:
            return page
        if not self._free:
            raise PagesExhaustedError(
                f"PARA side buffer full: {self.capacity} pages in use. Raise max_num_seqs headroom "
                "or lower concurrency."
            )
        page = self._free.pop()
        self.page_of[req_id] = page
        return page

    def commit_filled(self, req_ids) -> None:
        """Mark pages filled after the forward that ran their VG (released ones stay released)."""
        for rid in req_ids:
            if rid in self.page_of:
                self.filled.add(rid)

    def fill_pages(self, pages: torch.Tensor, vectors: torch.Tensor) -> None:
        """Write the same per-layer vectors ([layers, vector_width]) into every page of `pages`
        (a static adapter's, (IA)^3: no VG, one copy for all layers)."""
        n = pages.shape[0]
        src = vectors.to(self.vectors.dtype).unsqueeze(1).expand(self.num_layers, n, self.vector_width)
        self.vectors.index_copy_(1, pages, src)

    def release(self, req_id: str) -> None:
        page = self.page_of.pop(req_id, None)
        self.filled.discard(req_id)
        if page is not None:
            self._free.append(page)

    # ------------------------------------------------------------ forward side
    def gather(self, layer: int, start: int, end: int, num_tokens: int) -> torch.Tensor:
        """Per-token vectors `[start:end]` of one (local) layer for the current step: [num_tokens, end - start]."""
        return self.vectors[layer, :, start:end].index_select(0, self.token_pages[:num_tokens])
