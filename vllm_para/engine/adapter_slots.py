"""Registered PARA adapters and the device slots that hold their VG weights.

The VG runs only at prefill, so only the adapters of the prompts in the
current step must be resident. Slots are filled from disk on demand and
swapped least-recently-used; a step that needs more adapters than there are
slots gets temporary overflow copies for that step instead of an error.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..adapter import load_adapter
from ..config import ModelShape, PARAConfig
from ..core import VGWeights, expand_to_all_targets



class UnknownAdapterError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class RegisteredAdapter:
    name: str
    path: str
    config: PARAConfig
    version: int  # bumps when a name is re-registered, so stale slots are never reused


class AdapterRegistry:
    """name -> adapter directory, validated against the base model at registration.

    Every registration gets a version. The frontend assigns versions and passes
    them to the workers, so both sides agree which load a request was admitted
    under. Removing a name only stops new requests from selecting it: requests
    admitted before still find their (name, version) until they finish.
    """

    def __init__(self, shape: ModelShape, modules: dict[str, str] | None = None, check_weights: bool = True) -> None:
        self.shape = shape
        self._active: dict[str, RegisteredAdapter] = {}
        self._all: dict[tuple[str, int], RegisteredAdapter] = {}
        self._version = 0
        self._lock = threading.Lock()
        for name, path in (modules or {}).items():
            self.add(name, path, check_weights=check_weights)

    def add(self, name: str, path: str, version: int | None = None, check_weights: bool = True) -> RegisteredAdapter:
        """Validate the adapter and register it.

        `check_weights=False` reads only the config (workers: the frontend has
        already checked every tensor, and slots re-check them when they load)."""
        with self._lock:
            if name in self._active:
                raise ValueError(f"PARA adapter {name!r} is already loaded (from {self._active[name].path}).")
        if check_weights:
            config = load_adapter(path, base_shape=self.shape).config  # raises with file/tensor details
        else:
            config = PARAConfig.load(path)
            config.check_matches(self.shape, where=str(path))
        with self._lock:
            if name in self._active:
                raise ValueError(f"PARA adapter {name!r} is already loaded (from {self._active[name].path}).")
            self._version = max(self._version + 1, version or 0)
            entry = RegisteredAdapter(name, str(path), config, version or self._version)
            self._active[name] = entry
            self._all[(name, entry.version)] = entry
            return entry

    def remove(self, name: str) -> RegisteredAdapter:
        with self._lock:
            if name not in self._active:
                raise UnknownAdapterError(self.unknown_message(name))
            return self._active.pop(name)

    def get(self, name: str, version: int | None = None) -> RegisteredAdapter:
        entry = self._active.get(name) if version is None else self._all.get((name, version))
        if entry is None:
            raise UnknownAdapterError(self.unknown_message(name))
        return entry

    def names(self) -> list[str]:
        return sorted(self._active)

    def __contains__(self, name: str) -> bool:
        return name in self._active

    def unknown_message(self, name: str) -> str:
        return f"PARA adapter {name!r} is not loaded. Available adapters: {self.names()}."


@dataclass
class SlotWeights:
    """One adapter's VG weights on the device, this rank's vector slice."""

    down: torch.Tensor  # [L, r, H]
    up: torch.Tensor  # [L, V, r]
    up_bias: torch.Tensor  # [L, V]
    pooling: str


class AdapterSlots:
    """`max_adapters` preallocated, per-layer stacked device slots of VG weights (float32)."""

    def __init__(
        self,
        registry: AdapterRegistry,
        num_slots: int,
        max_rank: int,
        vector_width: int,
        shard_index: torch.Tensor | None,
        device: torch.device | str,
    ) -> None:
        shape = registry.shape
        L, H, V = shape.num_hidden_layers, shape.hidden_size, vector_width
        self.registry = registry
        self.max_rank = max_rank
        self.shard_index = shard_index
        self.device = device
        self.down = torch.zeros(num_slots, L, max_rank, H, device=device)
        self.up = torch.zeros(num_slots, L, V, max_rank, device=device)
        self.up_bias = torch.ones(num_slots, L, V, device=device)
        self._rank = [0] * num_slots
        self._pooling = ["last"] * num_slots
        self._resident: OrderedDict[tuple[str, int], int] = OrderedDict()  # (name, version) -> slot, LRU first
        self.loads = 0

    @property
    def num_slots(self) -> int:
        return self.down.shape[0]

    @property
    def bytes_total(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.down, self.up, self.up_bias))

    def _read(self, entry: RegisteredAdapter) -> VGWeights:
        adapter = load_adapter(entry.path, base_shape=self.registry.shape)
        full = expand_to_all_targets(adapter.weights, adapter.config)
        up, bias = full.up, full.up_bias
        if self.shard_index is not None:
            up, bias = up.index_select(1, self.shard_index.cpu()), bias.index_select(1, self.shard_index.cpu())
        self.loads += 1
        return VGWeights(full.down, up, bias)

    def _view(self, slot: int) -> SlotWeights:
        r = self._rank[slot]
        return SlotWeights(self.down[slot, :, :r], self.up[slot, :, :, :r], self.up_bias[slot], self._pooling[slot])

    def acquire(self, keys: set[tuple[str, int]]) -> dict[tuple[str, int], SlotWeights]:
        """Make every (name, version) in `keys` usable for this step."""
        out: dict[tuple[str, int], SlotWeights] = {}
        needed = set(keys)
        for key in sorted(keys):
            name = key[0]
            entry = self.registry.get(*key)
            if entry.config.r > self.max_rank:
                raise ValueError(
                    f"PARA adapter {name!r} has r={entry.config.r} > max_rank={self.max_rank}; "
                    "raise para.max_rank."
                )
            slot = self._resident.get(key)
            if slot is None:
                slot = self._free_slot(needed)
                if slot is None:  # more adapters in this step than slots: temporary copy
                    w = self._read(entry).to(device=self.device, dtype=torch.float32)
                    out[key] = SlotWeights(w.down, w.up, w.up_bias, entry.config.pooling)
                    continue
                self._fill(slot, key, entry)
            self._resident.move_to_end(key)
            out[key] = self._view(slot)
        return out

    def _free_slot(self, needed: set[tuple[str, int]]) -> int | None:
        used = set(self._resident.values())
        for slot in range(self.num_slots):
            if slot not in used:
                return slot
        for key, slot in self._resident.items():  # least recently used first
            if key not in needed:
                del self._resident[key]
                return slot
        return None

    def _fill(self, slot: int, key: tuple[str, int], entry: RegisteredAdapter) -> None:
        w = self._read(entry)
        r = entry.config.r
        self.down[slot].zero_()
        self.up[slot].zero_()
        self.down[slot, :, :r].copy_(w.down)
        self.up[slot, :, :, :r].copy_(w.up)
        self.up_bias[slot].copy_(w.up_bias)
        self._rank[slot] = r
        self._pooling[slot] = entry.config.pooling
        self._resident[key] = slot
