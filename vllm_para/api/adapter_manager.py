"""The runtime life of adapters in one API server: staged loads, unloads that
wait for in-flight requests, and first-use loading from `--para-adapter-dir`
with a bounded host cache (`--max-cpu-para-adapters`).

Load: the API server reads the adapter's files once (O_NOFOLLOW | O_NONBLOCK,
checks on the open descriptor, within `--para-load-timeout`), validates those
bytes (every tensor, base-model fit, `--max-para-rank`) without publishing the
name, and sends the same bytes to every worker, which checks them again and
keeps the adapter in host memory (no worker opens a file); only when all have it
is the name published. A failure on any worker rolls the load back on all of them.

Unload: the name stops being selectable at once; requests admitted before
finish under the version they were admitted with, and the workers forget that
version when the last of them has ended.

First use: a request naming an adapter that is not loaded but exists as
`DIR/<name>/` loads it (once, however many requests ask at the same time),
before admission, never inside the engine. Adapters loaded that way form an
LRU cache of at most `max_cpu_adapters`; the least recently used one with no
request in flight (or between resolution and admission) is unloaded to make
room. Adapters named at start-up or loaded by an admin call are never evicted.

Runs in: the API server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections import OrderedDict
from pathlib import Path

from vllm_para.adapter import read_adapter_files
from vllm_para.api.admission import FrontendState
from vllm_para.common.settings import adapter_name_problem
from vllm_para.common.catalog import (
    AdapterRejected,
    RegisteredAdapter,
    UnknownAdapterError,
)

from .metrics import ADAPTER_CACHE, COLD_LOAD_SECONDS

logger = logging.getLogger("vllm.para")  # under vLLM's logger: same handlers and level

RETIRE_POLL_SECONDS = 0.05


class AdapterLoadError(Exception):
    """A load was refused (the message says why): answered 400."""


class AdapterManager:
    def __init__(self, state: FrontendState, client) -> None:
        self.state = state
        self.client = client
        self._lock = asyncio.Lock()  # one load/unload at a time (workers see them in order)
        self._first_use: dict[str, asyncio.Task] = {}
        self._cached: OrderedDict[str, None] = OrderedDict()  # dir-resolved adapters, least recent first
        self._pins: dict[str, weakref.WeakSet] = {}  # name -> tasks between resolution and admission
        self._retiring: set[asyncio.Task] = set()

    # ------------------------------------------------------------ admin calls
    async def load(self, name: str, path: str) -> RegisteredAdapter:
        problem = adapter_name_problem(name)
        if problem:
            raise AdapterLoadError(f"para_name {name[:80]!r} is invalid: it {problem}.")
        async with self._lock:
            return await self._load_locked(name, path)

    async def _load_locked(self, name: str, path: str) -> RegisteredAdapter:
        registry = self.state.registry
        try:
            # The adapter's bytes are read once, here, off the event loop and within
            # --para-load-timeout; the workers get these bytes and never open the files, so
            # nothing on the engine's step path waits on a file system.
            files = await asyncio.to_thread(read_adapter_files, path, registry.read_timeout_s)
            # full validation (config, every tensor, base-model fit, max rank); not yet selectable
            entry = await asyncio.to_thread(registry.load, name, path, files=files)
        except AdapterRejected as exc:
            raise AdapterLoadError(str(exc)) from None
        except Exception as exc:
            raise AdapterLoadError(f"Cannot load PARA adapter {name!r} from {path[:300]}: {exc}") from None
        try:
            await self.client.collective_rpc("para_add_adapter", args=(name, files.to_wire(), entry.version))
        except Exception as exc:
            registry.abandon(entry)
            try:  # roll back the workers that did load it
                await self.client.collective_rpc("para_remove_adapter", args=(name, entry.version))
            except Exception as undo_exc:  # pragma: no cover - engine going down
                logger.warning("PARA: rollback of adapter %r failed: %s", name, undo_exc)
            raise AdapterLoadError(f"Cannot load PARA adapter {name!r}: "
                                   f"a worker refused it: {_last_line(exc)}") from None
        registry.publish(entry)  # every worker has it: selectable from now on
        logger.info("PARA adapter %r loaded from %s (version %d)", name, entry.path, entry.version)
        return entry

    async def unload(self, name: str) -> RegisteredAdapter:
        async with self._lock:
            return self._unload_locked(name)

    def _unload_locked(self, name: str) -> RegisteredAdapter:
        entry = self.state.registry.remove(name)  # raises UnknownAdapterError; new requests now get 404
        self._cached.pop(name, None)
        task = asyncio.get_running_loop().create_task(self._retire_when_idle(entry))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        logger.info("PARA adapter %r unloaded (version %d)", name, entry.version)
        return entry

    async def _retire_when_idle(self, entry: RegisteredAdapter) -> None:
        """Workers forget (name, version) once no admitted request uses it."""
        key = (entry.name, entry.version)
        while self.state.in_flight(key):
            await asyncio.sleep(RETIRE_POLL_SECONDS)
        self.state.registry.retire(*key)
        try:
            await self.client.collective_rpc("para_remove_adapter", args=key)
        except Exception as exc:  # pragma: no cover - engine going down
            logger.warning("PARA: workers could not drop adapter %r version %d: %s", *key, exc)

    # -------------------------------------------------------------- first use
    def directory_path(self, name: str) -> Path | None:
        """`DIR/<name>` if it is a directory inside DIR (None: not there, or escaping it)."""
        root = self.state.settings.adapter_dir
        if root is None or adapter_name_problem(name):
            return None
        try:
            base = Path(os.path.realpath(root))
            candidate = Path(os.path.realpath(base / name))
            if candidate.parent != base or not candidate.is_dir():
                return None  # missing, or a symlink pointing out of DIR
        except (OSError, ValueError):  # a name the file system refuses (too long, ...): not an adapter there
            return None
        return candidate

    async def resolve(self, name: str) -> bool:
        """Make `name` selectable if it can be: True if loaded (now or before)."""
        registry = self.state.registry
        if name in registry:
            if name in self._cached:
                self._cached.move_to_end(name)
                ADAPTER_CACHE.labels("hit").inc()
                self._pin(name)
            return True
        path = self.directory_path(name)
        if path is None:
            return False
        task = self._first_use.get(name)
        if task is None:  # the first request for it loads it; the others wait for that load
            task = asyncio.get_running_loop().create_task(self._load_from_dir(name, str(path)))
            self._first_use[name] = task
            task.add_done_callback(lambda _t, n=name: self._first_use.pop(n, None))
        self._pin(name)  # before awaiting: another first use's eviction must not take it from under us
        await asyncio.shield(task)
        return name in registry

    async def _load_from_dir(self, name: str, path: str) -> None:
        ADAPTER_CACHE.labels("miss").inc()
        began = time.perf_counter()
        async with self._lock:
            if name in self.state.registry:
                return
            self._evict_for_one_more()
            await self._load_locked(name, path)
            self._cached[name] = None
        COLD_LOAD_SECONDS.observe(time.perf_counter() - began)

    def _pin(self, name: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._pins.setdefault(name, weakref.WeakSet()).add(task)

    def _busy(self, name: str) -> bool:
        entry = self.state.registry.get(name)
        if self.state.in_flight((name, entry.version)):
            return True
        pins = self._pins.get(name)
        return bool(pins) and any(not t.done() for t in pins)

    def _evict_for_one_more(self) -> None:
        limit = self.state.settings.max_cpu_adapters
        if limit is None:
            return
        while len(self._cached) >= limit:
            victim = next((n for n in self._cached if not self._busy(n)), None)
            if victim is None:
                logger.warning("PARA: host cache over its bound (%d): every cached adapter has requests in flight",
                               limit)
                return
            try:
                self._unload_locked(victim)
            except UnknownAdapterError:
                self._cached.pop(victim, None)

    @property
    def cached(self) -> list[str]:
        return list(self._cached)


def _last_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def manager_of(state: FrontendState, client) -> AdapterManager:
    """The API server's adapter manager (one per engine state)."""
    manager = getattr(state, "manager", None)
    if manager is None:
        manager = state.manager = AdapterManager(state, client)
    return manager
