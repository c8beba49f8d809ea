"""Beam search over HTTP (`use_beam_search`) with a PARA adapter.

vLLM's online beam search sends one single-token request per beam per step,
with fresh SamplingParams and no `extra_args`. While it runs for a request
whose `model` names a PARA adapter, this module remembers the adapter and the
original prompt length (a context variable, inherited by the per-beam tasks;
the adapter may be named by `model` or by `vllm_xargs.para_adapter`),
and `with_beam_adapter` adds both to each beam request, so every beam is
scored under the vectors of the original prompt.

Runs in: the API server.
"""

from __future__ import annotations

import contextvars
import functools

from vllm_para.common.request import PARARequest

from .metrics import count_request, count_tokens, output_tokens
from .openai_models import requested_adapter

_beam_adapter: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar("para_beam", default=None)


def in_beam_search() -> bool:
    return _beam_adapter.get() is not None


def with_beam_adapter(sampling_params):
    """The params of one beam request, with its PARA adapter and pooling length."""
    beam = _beam_adapter.get()
    if beam is None or PARARequest.of(sampling_params).selects_adapter:
        return sampling_params
    params = sampling_params.clone()
    params.extra_args = PARARequest.beam(*beam).written(params.extra_args)
    return params


def wrap_beam_search(original):
    @functools.wraps(original)
    async def beam_search(self, prompt, request_id, params, *args, **kwargs):
        name = requested_adapter()  # by `model`, or by vllm_xargs.para_adapter with the base model
        if name is None:
            async for output in original(self, prompt, request_id, params, *args, **kwargs):
                yield output
            return
        decoder_prompt = prompt if prompt.get("type") != "enc_dec" else prompt["decoder_prompt"]
        token = _beam_adapter.set((name, len(decoder_prompt["prompt_token_ids"])))
        count_request(name)
        try:
            async for output in original(self, prompt, request_id, params, *args, **kwargs):
                if output.finished:
                    count_tokens(name, output_tokens(output))  # beam outputs are cumulative
                yield output
        finally:
            _beam_adapter.reset(token)

    return beam_search
