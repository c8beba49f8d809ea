"""`AsyncLLM.generate`, wrapped: every request entering the API server's engine
client is counted per adapter, tracked while in flight (so an unloaded
adapter's version is dropped only after its last request), and each step of an
HTTP beam search gets its PARA adapter.

Runs in: the API server.
"""

from __future__ import annotations

import functools

from vllm_para.common.request import PARARequest

from .http_beam_search import in_beam_search, with_beam_adapter
from .metrics import BASE_LABEL, count_request, count_tokens, output_tokens


def _adapter_of(sampling_params, registry) -> str | None:
    """The metrics label: a loaded adapter's name, __base__, or None (a name that
    admission will refuse: never a label, so clients cannot grow the series)."""
    name = PARARequest.of(sampling_params).adapter
    if name is None:
        return BASE_LABEL
    return name if registry is not None and name in registry else None


def wrap_generate(original):
    """AsyncLLM.generate: gives beam-search requests their PARA adapter and
    counts requests and generated tokens per adapter."""
    from vllm.sampling_params import RequestOutputKind

    from vllm_para.api.admission import frontend_state

    @functools.wraps(original)
    async def generate(self, prompt, sampling_params, request_id, *args, **kwargs):
        state = frontend_state(self.vllm_config)
        if state is None:
            async for output in original(self, prompt, sampling_params, request_id, *args, **kwargs):
                yield output
            return
        state.track_inflight = True  # admission records this request's adapter version until it ends
        adapter, generated = None, 0
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
                    generated = output_tokens(output) + (0 if cumulative else generated)
                    if output.finished:  # counted before the last output goes out
                        count_tokens(adapter, generated)
                        generated = 0
                yield output
        finally:
            if adapter is not None:
                count_tokens(adapter, generated)  # an aborted request: what it generated
            state.finished(request_id)

    return generate


