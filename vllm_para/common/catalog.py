"""The adapter catalog: registered PARA adapters' names, versions and digests, validated once.

The API server's catalog (`api.admission.frontend_registry`) keeps no weights; in every
worker, `vllm_para.worker.host_store.HostStore` extends it with each adapter's VG weights in
host memory. Every (name, version) is read from disk once, when it is registered (in the
API server; the workers get its bytes over `collective_rpc` and never open the files),
validated, and never read again.

Runs in: the API server, and (as the base of `HostStore`) every worker process.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

from vllm_para.adapter import DEFAULT_READ_TIMEOUT_S, AdapterFiles, parse_adapter, read_adapter_files
from vllm_para.config import WEIGHTS_FILE, ModelShape, PARAConfig
from vllm_para.core import VGWeights


class UnknownAdapterError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class AdapterRejected(ValueError):
    """An adapter cannot be registered (invalid, too large, name taken); the message says why."""


@dataclass(frozen=True)
class RegisteredAdapter:
    name: str
    path: str
    config: PARAConfig
    version: int  # bumps when a name is re-registered, so stale slots are never reused
    digest: str = ""  # sha256 of the weights bytes validated at registration
    weights: VGWeights | None = field(default=None, compare=False, repr=False)  # host copy (HostStore only)
    kind: str = "para"  # "para", or "ia3": a PEFT (IA)^3 adapter served as static PARA vectors

    @property
    def host_bytes(self) -> int:
        if self.weights is None:
            return 0
        return sum(t.numel() * t.element_size() for t in (self.weights.down, self.weights.up, self.weights.up_bias))


class AdapterCatalog:
    """name -> adapter, validated against the base model (and `max_rank`) at registration.

    Every registration gets a version. The frontend assigns versions and passes
    them to the workers, so both sides agree which load a request was admitted
    under. Registration is two-phase: `load` validates (and, with
    `prepare_weights`, keeps the weights in host memory) without making the
    name selectable; `publish` makes it selectable. Removing a name only stops
    new requests from selecting it; `retire` drops a (name, version) once no
    request uses it any more.
    """

    def __init__(
        self,
        shape: ModelShape,
        modules: dict[str, str] | None = None,
        max_rank: int | None = None,
        read_timeout_s: float | None = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        self.shape = shape
        self.max_rank = max_rank
        self.read_timeout_s = read_timeout_s
        self._active: dict[str, RegisteredAdapter] = {}
        self._all: dict[tuple[str, int], RegisteredAdapter] = {}
        self._pending: set[str] = set()
        self._version = 0
        self._lock = threading.Lock()
        for name, path in (modules or {}).items():
            self.add(name, path)

    def load(self, name: str, path: str, version: int | None = None, digest: str | None = None,
             replace: bool = False, files: AdapterFiles | None = None) -> RegisteredAdapter:
        """Validate the adapter (its `files`, or the directory `path` read once now); reserve
        `name`. Not selectable until `publish`. `replace`: a name that is active may be loaded
        again (workers: the API server decides)."""
        with self._lock:
            if (name in self._active and not replace) or name in self._pending:
                where = self._active[name].path if name in self._active else "a load in progress"
                raise AdapterRejected(f"PARA adapter {name!r} is already loaded (from {where}); unload it first.")
            self._pending.add(name)
        try:
            if files is None:
                files = read_adapter_files(path, self.read_timeout_s)
            entry = self._read(name, path, version, digest, files)
        except BaseException:
            with self._lock:
                self._pending.discard(name)
            raise
        with self._lock:
            self._all[(name, entry.version)] = entry
        return entry

    def _read(self, name: str, path: str, version: int | None, digest: str | None,
              files: AdapterFiles) -> RegisteredAdapter:
        adapter = parse_adapter(files, base_shape=self.shape)  # raises with file/tensor details
        after = hashlib.sha256(files.weights).hexdigest()  # of the bytes validated here, not the sender's word
        if digest is not None and digest != after:
            raise AdapterRejected(
                f"{path}: {WEIGHTS_FILE} differs from the bytes the server validated; retry the load."
            )
        config = adapter.config
        if self.max_rank is not None and config.r > self.max_rank:
            raise AdapterRejected(
                f"PARA adapter {name!r} has r={config.r} > max_rank={self.max_rank}; start the server with a "
                f"larger --max-para-rank (additional_config para.max_rank) or train with r <= {self.max_rank}."
            )
        weights = self._host_weights(adapter.weights, config)
        with self._lock:
            self._version = max(self._version + 1, version or 0)
            return RegisteredAdapter(name, str(path), config, version or self._version, after, weights, files.kind)

    def _host_weights(self, weights: VGWeights, config: PARAConfig) -> VGWeights | None:
        """What an entry keeps of its weights: nothing here (the API server validates only)."""
        return None

    def publish(self, entry: RegisteredAdapter) -> None:
        with self._lock:
            self._pending.discard(entry.name)
            self._active[entry.name] = entry
            self._all[(entry.name, entry.version)] = entry

    def abandon(self, entry: RegisteredAdapter) -> None:
        """Undo a `load` that was never published."""
        with self._lock:
            self._pending.discard(entry.name)
            if self._active.get(entry.name) is not entry:
                self._all.pop((entry.name, entry.version), None)

    def add(self, name: str, path: str, version: int | None = None, digest: str | None = None,
            replace: bool = False, files: AdapterFiles | None = None) -> RegisteredAdapter:
        entry = self.load(name, path, version, digest, replace, files)
        self.publish(entry)
        return entry

    def remove(self, name: str) -> RegisteredAdapter:
        with self._lock:
            if name not in self._active:
                raise UnknownAdapterError(self.unknown_message(name))
            return self._active.pop(name)

    def retire(self, name: str, version: int) -> None:
        """Forget (name, version) entirely (no request uses it any more)."""
        with self._lock:
            entry = self._all.pop((name, version), None)
            if entry is not None and self._active.get(name) is entry:
                del self._active[name]

    def get(self, name: str, version: int | None = None) -> RegisteredAdapter:
        entry = self._active.get(name) if version is None else self._all.get((name, version))
        if entry is None:
            raise UnknownAdapterError(self.unknown_message(name))
        return entry

    def find(self, name: str, version: int) -> RegisteredAdapter | None:
        return self._all.get((name, version))

    def names(self) -> list[str]:
        return sorted(self._active)

    def kinds(self) -> dict[str, int]:
        """Active adapters per kind ("para", "ia3")."""
        out: dict[str, int] = {}
        for entry in list(self._active.values()):
            out[entry.kind] = out.get(entry.kind, 0) + 1
        return out

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self._active

    @property
    def num_held(self) -> int:
        """(name, version) pairs registered and not yet retired (active or draining)."""
        return len(self._all)

    def unknown_message(self, name: str) -> str:
        shown = name if len(name) <= 80 else name[:80] + "..."
        return f"PARA adapter {shown!r} is not loaded. Available adapters: {self.names()}."


