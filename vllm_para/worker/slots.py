"""Device slots that hold registered adapters' VG weights (workers).

The VG runs only at prefill, so only the adapters of the prompts in the
current step must be resident on the device: slots are filled from the
registry's host copies on demand and swapped least-recently-used (vLLM's
LRUCache); a step that needs more adapters than there are slots gets
temporary device copies for that step instead of an error.

Runs in: every worker process.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.utils.cache import LRUCache

from vllm_para.core import VGWeights
from vllm_para.common.catalog import RegisteredAdapter
from vllm_para.worker.host_store import HostStore


@dataclass
class SlotWeights:
    """One adapter's VG weights on the device, this rank's vector slice."""

    down: torch.Tensor  # [L, r, H]
    up: torch.Tensor  # [L, V, r] (in a slot: a view of rank-major storage, so up[l].t() is contiguous)
    up_bias: torch.Tensor  # [L, V]
    pooling: str
    static: bool = False  # (IA)^3: W_down = W_up = 0, so every prompt's vector is exactly up_bias


class _ResidentSlots(LRUCache):
    """(name, version) -> slot index, in vLLM's LRU cache (pinning keeps a step's
    adapters resident while others are swapped); evicting a key frees its slot."""

    def __init__(self, capacity: int, free: list[int]) -> None:
        super().__init__(capacity)
        self.free = free

    def _on_remove(self, key, slot) -> None:
        self.free.append(slot)


class AdapterSlots:
    """`max_adapters` preallocated, per-layer stacked device slots of VG weights (float32).

    `up` is stored rank-major ([slot, layer, rank, V]): the VG's second product reads one
    adapter's `r x V` block as one contiguous run of memory, not `r` values out of every
    `max_rank` (at r=12 of 64, a 5x wider sweep through memory per prompt and layer, measured
    at about 40% of the VG's prefill time on CPU, and cache lines the next GEMM wanted).
    """

    def __init__(
        self,
        registry: HostStore,
        num_slots: int,
        max_rank: int,
        vector_width: int,
        device: torch.device | str,
        num_layers: int | None = None,
    ) -> None:
        shape = registry.shape
        L, H, V = num_layers or shape.num_hidden_layers, shape.hidden_size, vector_width
        self.registry = registry
        self.max_rank = max_rank
        self.device = device
        self.down = torch.zeros(num_slots, L, max_rank, H, device=device)
        self.up = torch.zeros(num_slots, L, max_rank, V, device=device)  # rank-major, see above
        self.up_bias = torch.ones(num_slots, L, V, device=device)
        self._rank = [0] * num_slots
        self._pooling = ["last"] * num_slots
        self._static = [False] * num_slots
        self._resident = _ResidentSlots(num_slots, list(range(num_slots - 1, -1, -1)))
        self.loads = 0

    @property
    def num_slots(self) -> int:
        return self.down.shape[0]

    @property
    def num_resident(self) -> int:
        return len(self._resident)

    @property
    def bytes_total(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.down, self.up, self.up_bias))

    def _read(self, entry: RegisteredAdapter) -> VGWeights:
        """The host copy made at registration (never the files: they may be gone or rewritten)."""
        self.loads += 1
        return entry.weights

    def evict(self, key: tuple[str, int]) -> None:
        self._resident.pop(key, None)

    def _view(self, slot: int) -> SlotWeights:
        r = self._rank[slot]
        up = self.up[slot, :, :r].transpose(1, 2)  # [L, V, r] view; up[l].t() is a contiguous [r, V] block
        return SlotWeights(self.down[slot, :, :r], up, self.up_bias[slot], self._pooling[slot], self._static[slot])

    def acquire(self, keys: set[tuple[str, int]]) -> dict[tuple[str, int], SlotWeights]:
        """Make every (name, version) in `keys` usable for this step."""
        resident = self._resident
        out: dict[tuple[str, int], SlotWeights] = {}
        ordered = sorted(keys)
        for key in ordered:  # this step's adapters already resident stay so
            if key in resident:
                resident.pin(key)
        try:
            for key in ordered:
                entry = self.registry.find(*key)  # planned keys are registered: the runtime checked
                slot = resident.get(key)
                if slot is None:
                    if not resident.free and len(resident) > len(resident.pinned_items):
                        resident.remove_oldest()  # least recently used adapter not in this step
                    if not resident.free:  # more adapters in this step than slots: temporary copy
                        w = self._read(entry).to(device=self.device, dtype=torch.float32)
                        out[key] = SlotWeights(w.down, w.up, w.up_bias, entry.config.pooling, entry.kind == "ia3")
                        continue
                    slot = resident.free.pop()
                    self._fill(slot, entry)
                    resident.put(key, slot)
                    resident.pin(key)
                out[key] = self._view(slot)
        finally:
            resident.pinned_items.clear()
        return out

    def _fill(self, slot: int, entry: RegisteredAdapter) -> None:
        w = self._read(entry)
        r = entry.config.r
        self.down[slot].zero_()
        self.up[slot].zero_()
        self.down[slot, :, :r].copy_(w.down, non_blocking=True)
        self.up[slot, :, :r].copy_(w.up.transpose(1, 2), non_blocking=True)
        self.up_bias[slot].copy_(w.up_bias, non_blocking=True)
        self._rank[slot] = r
        self._pooling[slot] = entry.config.pooling
        self._static[slot] = entry.kind == "ia3"
