"""What the VG must compute in the current forward step.

The runner hook builds a `StepPlan` from the scheduler output before each
forward: for every sequence whose prompt is prefilled in this step, where its
prompt sits in the flat token batch, which adapter it uses and which page its
vectors go to. The plan is host-side data; the model's `compute_vectors` op
reads it eagerly, so the compiled / graph-captured parts of the forward never
see a data-dependent shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vllm_para.engine.worker.slots import SlotWeights


@dataclass
class VGGroup:
    """Prompts of one adapter in this step (one batched VG call per layer)."""

    weights: SlotWeights
    pages: torch.Tensor  # [n] destination pages (device)
    starts: list[int]  # flat token index of each prompt's first pooled token
    ends: list[int]  # exclusive; ends[i] - 1 is the prompt's final token
    last_index: torch.Tensor  # [n] = ends - 1 (device), for "last" pooling


@dataclass
class StepPlan:
    groups: list[VGGroup] = field(default_factory=list)
    pending_fills: list[str] = field(default_factory=list)  # request ids whose pages this step fills

    def __bool__(self) -> bool:
        return bool(self.groups)


_current_plan: StepPlan = StepPlan()


def current_plan() -> StepPlan:
    return _current_plan


def set_plan(plan: StepPlan | None) -> None:
    global _current_plan
    _current_plan = plan if plan is not None else StepPlan()
