"""vLLM's scheduler plus two PARA rules: a PARA request starts only while a
side-buffer page is free, and a PARA prompt is prefilled in one step while
base requests keep chunked prefill.

Every PARA sequence holds one page of vectors from its first scheduled step
until it finishes, preemptions included (its vectors depend only on its
prompt, so a resumed request reuses them). Without admission control,
preempted requests holding pages plus newcomers taking new ones could exceed
the buffer (e.g. `--scheduling-policy priority`). Here the scheduler keeps the
same count as the workers' buffer: a waiting PARA request without a page is
skipped for this step (vLLM's own skip path, as for `max_loras`) until a page
frees; base requests are never held back, and nobody's vectors are evicted.

A PARA prompt's vectors need its last token's hidden state at every layer, so
its prefill cannot be split. vLLM decides chunking per waiting request from
`scheduler_config.enable_chunked_prefill`, right after the hook below runs for
that request; this scheduler keeps a private copy of its config and turns
chunking off for PARA requests only (vLLM's own non-chunked path: the request
waits for a step with room for its whole prompt). Admission refuses PARA
prompts longer than `max_num_batched_tokens`, so every one fits some step.

Installed through vLLM's `scheduler_cls` (not a patch): `PARAScheduler`, or
`PARAAsyncScheduler` when async scheduling is on.

Runs in: the engine-core process.
"""

from __future__ import annotations

import copy

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler

from vllm_para.common.request import PARARequest
from vllm_para.common.settings import (
    PARASettings,
    page_capacity,
)


def is_para_request(request) -> bool:
    return PARARequest.of(getattr(request, "sampling_params", None)).selects_adapter


class PageLedger:
    """Which requests hold a side-buffer page (pure bookkeeping, unit-tested)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.holders: set[str] = set()

    def try_reserve(self, request_id: str) -> bool:
        if request_id in self.holders:
            return True
        if len(self.holders) >= self.capacity:
            return False
        self.holders.add(request_id)
        return True

    def release(self, request_id: str) -> None:
        self.holders.discard(request_id)


class PageAdmissionMixin:
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        settings = PARASettings.from_additional_config(self.vllm_config.additional_config) or PARASettings()
        self.para_pages = PageLedger(page_capacity(settings, self.scheduler_config.max_num_seqs))
        self.scheduler_config = copy.copy(self.scheduler_config)  # private: chunking is set per request below
        self.para_base_chunked_prefill = bool(self.scheduler_config.enable_chunked_prefill)

    def _handle_blocked_waiting_request(self, request) -> bool:
        if not super()._handle_blocked_waiting_request(request):
            return False
        para = is_para_request(request)
        # read by vLLM for this very request, right after this hook
        self.scheduler_config.enable_chunked_prefill = self.para_base_chunked_prefill and not para
        if not para:
            return True
        # Reserve now: several waiting requests are considered in one schedule() call.
        return self.para_pages.try_reserve(request.request_id)

    def _free_request(self, request, *args, **kwargs):
        self.para_pages.release(request.request_id)
        return super()._free_request(request, *args, **kwargs)


class PARAScheduler(PageAdmissionMixin, Scheduler):
    pass


class PARAAsyncScheduler(PageAdmissionMixin, AsyncScheduler):
    pass


SCHEDULER_QUALNAME = f"{__name__}.PARAScheduler"
ASYNC_SCHEDULER_QUALNAME = f"{__name__}.PARAAsyncScheduler"
