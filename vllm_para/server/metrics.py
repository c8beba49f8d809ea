"""PARA metrics on the API server's /metrics, beside vLLM's own.

Requests and generated tokens are counted per adapter where requests enter
the engine client; side-buffer occupancy lives in the workers and is polled
once a second over `collective_rpc("para_stats")`.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from prometheus_client import Counter, Gauge

from ..engine.settings import REQUEST_ADAPTER_KEY

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
ADAPTER_DEVICE_BYTES = Gauge("vllm_para:adapter_slot_bytes", "Device memory of the VG weight slots (per worker).")

POLL_SECONDS = 1.0


def _adapter_of(sampling_params, registry) -> str | None:
    """The metrics label: a loaded adapter's name, __base__, or None (a name that
    admission will refuse: never a label, so clients cannot grow the series)."""
    extra = getattr(sampling_params, "extra_args", None) or {}
    name = extra.get(REQUEST_ADAPTER_KEY)
    if name is None:
        return BASE_LABEL
    return name if registry is not None and name in registry else None


def count_request(adapter: str) -> None:
    REQUESTS.labels(adapter).inc()


def count_tokens(adapter: str, output, cumulative: bool) -> None:
    """Count an output's new tokens (all of them if `cumulative` and it is the last)."""
    if cumulative and not output.finished:
        return
    GENERATION_TOKENS.labels(adapter).inc(sum(len(c.token_ids) for c in output.outputs))


def wrap_generate(original):
    """AsyncLLM.generate: gives beam-search requests their PARA adapter and
    counts requests and generated tokens per adapter."""
    from vllm.sampling_params import RequestOutputKind

    from ..engine.frontend import frontend_state
    from .beam_search import in_beam_search, with_beam_adapter

    @functools.wraps(original)
    async def generate(self, prompt, sampling_params, request_id, *args, **kwargs):
        state = frontend_state(self.vllm_config)
        if state is None:
            async for output in original(self, prompt, sampling_params, request_id, *args, **kwargs):
                yield output
            return
        state.track_inflight = True  # admission records this request's adapter version until it ends
        try:
            if in_beam_search():  # one step of one beam: counted once per request by the beam wrapper
                async for output in original(self, prompt, with_beam_adapter(sampling_params), request_id,
                                             *args, **kwargs):
                    yield output
                return
            adapter = _adapter_of(sampling_params, state.registry)
            if adapter is not None:
                count_request(adapter)
            cumulative = getattr(sampling_params, "output_kind", None) == RequestOutputKind.CUMULATIVE
            async for output in original(self, prompt, sampling_params, request_id, *args, **kwargs):
                if adapter is not None:
                    count_tokens(adapter, output, cumulative)
                yield output
        finally:
            state.finished(request_id)

    return generate


async def poll_worker_stats(engine_client) -> None:
    from ..engine.frontend import frontend_registry

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
                ADAPTER_DEVICE_BYTES.set(stats["adapter_device_bytes"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the engine may be shutting down
            logger.debug("PARA stats poll failed: %s", exc)
        await asyncio.sleep(POLL_SECONDS)
