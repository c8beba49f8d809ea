"""PARA metrics on the API server's /metrics, beside vLLM's own.

Requests and generated tokens are counted per adapter where requests enter
the engine client (server/generate_hook.py); side-buffer occupancy and adapter
memory live in the workers and are polled once a second over
`collective_rpc("para_stats")`.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger("vllm.para")  # under vLLM's logger: same handlers and level

BASE_LABEL = "__base__"

REQUESTS = Counter("vllm_para:requests", "Requests received, per PARA adapter (__base__: none).", ["adapter"])
GENERATION_TOKENS = Counter(
    "vllm_para:generation_tokens", "Generated tokens, per PARA adapter (__base__: none).", ["adapter"]
)
ADAPTERS_LOADED = Gauge("vllm_para:adapters_loaded", "PARA adapters currently loaded.")
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

POLL_SECONDS = 1.0


def count_request(adapter: str) -> None:
    REQUESTS.labels(adapter).inc()


def count_tokens(adapter: str, output, cumulative: bool) -> None:
    """Count an output's new tokens (all of them if `cumulative` and it is the last)."""
    if cumulative and not output.finished:
        return
    GENERATION_TOKENS.labels(adapter).inc(sum(len(c.token_ids) for c in output.outputs))


async def poll_worker_stats(engine_client) -> None:
    from vllm_para.engine.frontend.admission import frontend_registry

    while True:
        try:
            registry = frontend_registry(engine_client.vllm_config)
            ADAPTERS_LOADED.set(len(registry.names()) if registry is not None else 0)
            stats = (await engine_client.collective_rpc("para_stats"))[0]
            if stats:
                PAGES_IN_USE.set(stats["pages_in_use"])
                PAGES_CAPACITY.set(stats["pages_capacity"])
                BUFFER_BYTES.set(stats["buffer_bytes"])
                ADAPTER_HOST_BYTES.set(stats["adapter_host_bytes"])
                ADAPTERS_IN_HOST_MEMORY.set(stats["adapters_in_host_memory"])
                ADAPTER_DEVICE_BYTES.set(stats["adapter_device_bytes"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the engine may be shutting down
            logger.debug("PARA stats poll failed: %s", exc)
        await asyncio.sleep(POLL_SECONDS)
