"""PARA metrics on the API server's /metrics, beside vLLM's own.

Requests and generated tokens are counted per adapter where requests enter
the engine client (api/generate_hook.py); side-buffer occupancy and adapter
memory live in the workers and are read over `collective_rpc("para_stats")`
when /metrics is scraped (at most every `MIN_REFRESH_SECONDS`), never on a
timer: each such call takes the engine loop and the workers away from the
model for one round trip, and a 1 Hz poll measurably slowed a busy 2-core
server (loadtests, c=16). A server nobody scrapes pays nothing.

Runs in: the API server.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger("vllm.para")  # under vLLM's logger: same handlers and level

BASE_LABEL = "__base__"

REQUESTS = Counter("vllm_para:requests", "Requests received, per PARA adapter (__base__: none).", ["adapter"])
GENERATION_TOKENS = Counter(
    "vllm_para:generation_tokens", "Generated tokens, per PARA adapter (__base__: none).", ["adapter"]
)
ADAPTERS_LOADED = Gauge("vllm_para:adapters_loaded", "PARA adapters currently loaded.")
ADAPTER_KINDS = ("para", "ia3")  # fixed label values: no series per adapter name
ADAPTERS_LOADED_BY_KIND = Gauge(
    "vllm_para:adapters_loaded_by_kind", "Adapters currently loaded, per kind (para; ia3: PEFT (IA)^3).", ["kind"]
)
PAGES_IN_USE = Gauge("vllm_para:side_buffer_pages_in_use", "Side-buffer pages held by running sequences.")
PAGES_CAPACITY = Gauge("vllm_para:side_buffer_pages_capacity", "Side-buffer pages in total.")
BUFFER_BYTES = Gauge("vllm_para:side_buffer_bytes", "Side-buffer size in bytes (per worker).")
ADAPTER_HOST_BYTES = Gauge(
    "vllm_para:adapter_host_bytes", "Host memory holding registered adapters' VG weights (per worker)."
)
ADAPTERS_IN_HOST_MEMORY = Gauge(
    "vllm_para:adapters_in_host_memory", "Adapter versions whose weights a worker holds in host memory."
)
ADAPTER_CACHE = Counter(
    "vllm_para:adapter_cache", "First-use adapter lookups (hit: already in host memory; miss: loaded).", ["result"]
)
COLD_LOAD_SECONDS = Histogram(
    "vllm_para:adapter_cold_load_seconds", "Time to load an adapter on first use (validate + every worker).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
ADAPTER_DEVICE_BYTES = Gauge("vllm_para:adapter_slot_bytes", "Device memory of the VG weight slots (per worker).")

MIN_REFRESH_SECONDS = 0.25  # scrapes closer together than this reuse the last values
REFRESH_TIMEOUT_SECONDS = 5.0  # a busy or dying engine: serve the last values, do not hang the scrape


def count_request(adapter: str) -> None:
    REQUESTS.labels(adapter).inc()


def output_tokens(output) -> int:
    """Tokens an output carries (all so far if cumulative, the new ones if delta)."""
    return sum(len(c.token_ids) for c in output.outputs)


def count_tokens(adapter: str, tokens: int) -> None:
    """Add a request's generated tokens: once, when it finishes (or is aborted), not with a
    labelled Prometheus increment per streamed output, in the API server's per-token loop."""
    if tokens:
        GENERATION_TOKENS.labels(adapter).inc(tokens)


class WorkerStatsRefresher:
    """Sets the worker gauges from one `para_stats` call, on demand (a /metrics scrape)."""

    def __init__(self, engine_client) -> None:
        self.engine_client = engine_client
        self.refreshed_at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:  # concurrent scrapes share one call
            now = time.monotonic()
            if self.refreshed_at is not None and now - self.refreshed_at < MIN_REFRESH_SECONDS:
                return
            self.refreshed_at = now
            try:
                await asyncio.wait_for(self._refresh(), REFRESH_TIMEOUT_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the engine may be busy or shutting down: keep the last values
                logger.debug("PARA stats refresh failed: %r", exc)

    async def _refresh(self) -> None:
        from vllm_para.api.admission import frontend_registry

        registry = frontend_registry(self.engine_client.vllm_config)
        ADAPTERS_LOADED.set(len(registry.names()) if registry is not None else 0)
        kinds = registry.kinds() if registry is not None else {}
        for kind in ADAPTER_KINDS:
            ADAPTERS_LOADED_BY_KIND.labels(kind).set(kinds.get(kind, 0))
        stats = (await self.engine_client.collective_rpc("para_stats"))[0]
        if stats:
            PAGES_IN_USE.set(stats["pages_in_use"])
            PAGES_CAPACITY.set(stats["pages_capacity"])
            BUFFER_BYTES.set(stats["buffer_bytes"])
            ADAPTER_HOST_BYTES.set(stats["adapter_host_bytes"])
            ADAPTERS_IN_HOST_MEMORY.set(stats["adapters_in_host_memory"])
            ADAPTER_DEVICE_BYTES.set(stats["adapter_device_bytes"])


class RefreshOnScrape:
    """Pure ASGI middleware (no wrapping of response bodies, so streamed completions pass
    untouched): before a `GET /metrics` is answered, refresh the worker gauges through the
    app's `para_stats_refresher` (set once the engine client exists)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/") == "/metrics":
            app = scope.get("app")
            refresher = getattr(getattr(app, "state", None), "para_stats_refresher", None)
            if refresher is not None:
                await refresher.refresh()
        await self.app(scope, receive, send)
