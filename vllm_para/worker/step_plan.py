"""What the VG must compute in the current forward step.

Before each forward the runner hook reads the model runner's batch and asks
`plan_tokens` (a pure function of arrays, unit-tested without an engine) two
things: the side-buffer page of every token in the flat batch, and for which
prompts the VG runs now (where each prompt sits in the flat batch). The
runtime (runtime.py) turns the latter into a `StepPlan` of per-adapter groups
and stores it on the side buffer of the engine that owns it
(`VectorPages.plan`); the model's `compute_vectors` op reads it from there,
eagerly, so the compiled / graph-captured parts of the forward never see a
data-dependent shape. No plan lives at module level: two engines in one
process never see each other's steps.

Runs in: every worker process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from vllm_para.worker.slots import SlotWeights
from vllm_para.worker.vector_pages import UNIT_PAGE


class PromptSplitError(RuntimeError):
    """A PARA prompt is not prefilled in one step (an invariant the scheduler keeps)."""


@dataclass(frozen=True)
class VGRow:
    """One prompt whose vectors the VG computes in this step."""

    request: int  # index in the step's batch
    page: int  # destination page
    start: int  # flat token index of the prompt's first token (pooled by "mean")
    end: int  # exclusive: end - 1 is the prompt's final token


def plan_tokens(
    query_start_loc: np.ndarray,
    num_computed: np.ndarray,
    pages: Sequence[int],
    needs_vg: Sequence[bool],
    prompt_lens: Sequence[int],
    whole_prompt: Sequence[bool],
) -> tuple[np.ndarray, list[VGRow]]:
    """Pages of the step's tokens and the prompts whose VG runs now.

    Per request i of the step (tokens `query_start_loc[i]:query_start_loc[i+1]`
    of the flat batch, `num_computed[i]` tokens computed before this step):
    `pages[i]` is its page (UNIT_PAGE: no adapter), `needs_vg[i]` whether its
    vectors are still to be computed, `prompt_lens[i]` the length of the
    prompt the VG pools and `whole_prompt[i]` whether it pools every prompt
    token ("mean") or only the last ("last").

    Returns `token_pages` ([num_tokens] int64) and one `VGRow` per request
    whose VG runs. Raises `PromptSplitError` if such a prompt's pooled tokens
    are not all in this step.
    """
    num_reqs = len(pages)
    qsl = np.asarray(query_start_loc[: num_reqs + 1], dtype=np.int64)
    counts = np.diff(qsl)
    token_pages = np.repeat(np.asarray(pages, dtype=np.int64), counts)
    rows: list[VGRow] = []
    for i in range(num_reqs):
        if not needs_vg[i] or pages[i] == UNIT_PAGE:
            continue
        start, computed, prompt_len = int(qsl[i]), int(num_computed[i]), int(prompt_lens[i])
        first_needed = 0 if whole_prompt[i] else prompt_len - 1
        if computed > first_needed or computed + int(counts[i]) < prompt_len:
            raise PromptSplitError(
                f"PARA request at batch index {i}: its prompt (tokens 0..{prompt_len - 1}) is not prefilled in "
                f"one step (computed={computed}, scheduled={int(counts[i])}, pools "
                f"{'every token' if whole_prompt[i] else 'the last token'}). PARA needs its scheduler "
                "(enginecore/scheduler.py) and prefix-cache keys that include the adapter and prompt."
            )
        rows.append(VGRow(i, int(pages[i]), start - computed, start - computed + prompt_len))
    return token_pages, rows


@dataclass
class VGGroup:
    """Prompts of one adapter in this step (one VG call per layer)."""

    weights: SlotWeights
    rows: slice  # this group's rows of the step's VG rows (StepPlan.pages / last_index)
    starts: list[int]  # flat token index of each prompt's first pooled token ("mean" pooling)
    ends: list[int]  # exclusive; ends[i] - 1 is the prompt's final token


@dataclass
class StepPlan:
    """The step's VG rows, ordered by adapter group: each layer pools every row's final
    token with one gather, runs one VG per group, and writes all rows' vectors with one
    copy (the fewest eager calls per layer: at prefill they cost more than their arithmetic)."""

    groups: list[VGGroup] = field(default_factory=list)
    pages: torch.Tensor | None = None  # [rows] destination pages (device)
    last_index: torch.Tensor | None = None  # [rows] flat index of each prompt's final token (device)
    pending_fills: list[str] = field(default_factory=list)  # request ids whose pages this step fills

    def __bool__(self) -> bool:
        return bool(self.groups)
