"""Seconds per training step of each study method on a base model, float32 and bf16: the
study's budget (`python -m study.budget [--base smollm2-135m] [--steps 4]`).

Each (method, dtype) trains `--steps` + 1 steps of batch 8 on the QA task's training split
through the project's trainer (one warm-up step, not counted) and reports the median of the
timed steps; the markdown table goes to stdout and, with --out, to a file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .run import METHODS, study_base


# Float32 seconds per training step of batch 8, per task (PARA, 2 threads; median of 3 after one
# warm-up; 2026-12-03, an AMD EPYC with AVX2 only: no native bfloat16, the slowest 2-core machine the
# study has met). Matched LoRA measured 1.10-1.19x PARA's step; the other methods are within that.
STEP_SECONDS = {"qa_hard": 7.7, "boolq": 4.9, "arith": 4.7, "sql_hard": 3.4, "copa": 2.1}
METHOD_FACTOR = 1.15  # every method but PARA (a bound: lora_matched, the dearest measured)


def training_seconds(cfg, jobs) -> float:
    """Estimated training time of `jobs` under `cfg` on the machine of STEP_SECONDS (2-thread steps;
    the study trains 2 adapters at a time on one thread each, which is not slower)."""
    from .base import MULTI

    multi = sum(STEP_SECONDS[t] for t in cfg.tasks) / len(cfg.tasks)
    total = 0.0
    for job in jobs:
        steps = cfg.multi_steps if job.task == MULTI else cfg.steps
        per_step = multi if job.task == MULTI else STEP_SECONDS[job.task]
        total += steps * per_step * (1.0 if job.args["method"] == "para" else METHOD_FACTOR)
    return total


# The full preset's run of 2026-12-04 (reproduction/results/full-real-20261204: 2 cores of an AMD EPYC
# with AVX512-BF16, bf16 training, n_test 100): training wall 1189 + 1005 s; served evaluation per
# request, the PARA and LoRA engines running concurrently (phase A: PARA 750 requests in 452 s, LoRA
# 600 in 875 s; phase B: PARA 4,400 in 2,314 s, LoRA 3,000 in 4,366 s). BitFit's transformers
# engine is not budgeted: its few hundred requests end long before the LoRA engine's.
MEASURED_TRAIN_WALL_S = 1189 + 1005
MEASURED_FULL_N_TEST = 100
SECONDS_PER_REQUEST = {"para": 0.60, "lora": 1.46}
OTHER_S = 120  # the reference check (55 s), the vector analysis and the report


def eval_requests(cfg) -> dict[str, dict[str, int]]:
    """{phase: {engine: requests}} the study sends: phase A, every grid adapter on the selection
    split (validation, or test without one); phase B, the chosen grid adapters and phase B's on
    test; the base model in both, on the PARA engine (never on the LoRA one: see study.run)."""
    from .run import eval_tasks, grid_jobs, phase_b_jobs

    grid = grid_jobs(cfg)
    chosen = {}
    for j in grid:  # the request count does not depend on which rate is chosen
        chosen.setdefault((j.label, j.task), j.lr)
    selected = [j for j in grid if chosen[(j.label, j.task)] == j.lr]
    extra = phase_b_jobs(cfg, chosen)
    # without a validation split phase A already generated test for the base and the grid
    phases = {"A": (grid, cfg.n_val or cfg.n_test, True),
              "B": (extra if not cfg.n_val else selected + extra, cfg.n_test, bool(cfg.n_val))}
    out = {}
    for phase, (jobs, n, with_base) in phases.items():
        counts = {"para": len(cfg.tasks) * n if with_base else 0}
        for j in jobs:
            counts[j.engine] = counts.get(j.engine, 0) + len(eval_tasks(cfg, j.task)) * n
        out[phase] = counts
    return out


def wall_minutes(cfg) -> float:
    """Estimated wall time of a study run on the machine of the measured full run: training scaled
    from its measured wall by training_seconds(), each evaluation phase as long as its slowest engine."""
    from dataclasses import replace

    from .run import PRESETS, grid_jobs, phase_b_jobs

    def jobs(c):
        grid = grid_jobs(c)
        return grid + phase_b_jobs(c, {(j.label, j.task): j.lr for j in grid})

    measured = replace(PRESETS["full"], n_test=MEASURED_FULL_N_TEST)
    train = MEASURED_TRAIN_WALL_S * training_seconds(cfg, jobs(cfg)) / training_seconds(measured, jobs(measured))
    evals = sum(max(n * SECONDS_PER_REQUEST.get(e, 0.0) for e, n in counts.items())
                for counts in eval_requests(cfg).values())
    return (train + evals + OTHER_S) / 60


def step_seconds(base: Path, label: str, bf16: bool, steps: int, work: Path, task: str = "qa") -> float:
    from transformers import TrainerCallback

    from vllm_para.training.train import TrainArgs, train
    from . import get_task, write_jsonl
    from .run import matched_lora_rank

    args = dict(METHODS[label])
    data = write_jsonl(get_task(task).generate("train", 8 * (steps + 1)), work / f"{task}.jsonl")
    kw = dict(base_model=str(base), data=data, output=work / f"{label}-{bf16}", method=args["method"],
              max_steps=steps + 1, batch_size=8, save_steps=0, device="cpu", progress=False, max_length=256,
              bf16=bf16)
    if args["method"] == "para":
        kw.update(r=args["r"], targets=tuple(args["targets"]), pooling=args["pooling"])
    if args["method"] == "lora":
        targets = tuple(args["lora_target_modules"])
        r = matched_lora_rank(base, targets) if args["lora_r"] == "matched" else int(args["lora_r"])
        kw.update(lora_r=r, lora_alpha=2 * r, lora_target_modules=targets)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    train(TrainArgs(**kw), callbacks=[Clock()])
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    base = study_base(a.base, log=lambda m: print(m, file=sys.stderr))
    rows = ["| method | float32 s/step | bf16 s/step |", "|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="vllm-para-budget-") as tmp:
        for label in a.methods.split(","):
            cells = [step_seconds(base, label, bf16, a.steps, Path(tmp)) for bf16 in (False, True)]
            rows.append(f"| {label} | {cells[0]:.2f} | {cells[1]:.2f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    text = (f"Training step cost on `{a.base}` (batch 8, QA prompts, max length 256, 2 threads; median of "
            f"{a.steps} steps after one warm-up; {time.strftime('%Y-%m-%d %H:%M')})\n\n" + "\n".join(rows) + "\n")
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
