"""Where a PARA engine's per-step time goes, against a plain engine (CPU, in-process, cProfile).

    .venv/bin/python -m bench.profile_step [--eager] [--tokens 64] [--batch 1]

Builds the load test's full-mode model (hidden 1024, 4 layers; `--model smollm2-135m`: the real base)
and 8 PARA adapters, then runs
the same greedy decode in a plain engine and in a PARA engine (requests using adapters), one
engine at a time, in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, so the engine core and the
worker run under the profiler). Prints wall time per decode step for both and the cumulative
time of PARA's own functions per step: the host-side planning (`plan_step`), the VG op
(`compute_vectors`, which returns at once in decode steps), and, with --eager, the projection
wrappers (gather + scale; compiled, they are fused into the graph and not visible here).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
ROOT = Path(__file__).resolve().parents[1]

PARA_FUNCS = ("plan_step", "plan_tokens", "compute_vectors", "_model_forward", "forward")


def run(system: str, base: Path, adapters: dict[str, str], args) -> tuple[float, pstats.Stats]:
    from vllm import LLM, SamplingParams

    extra = {"additional_config": {"para": {"modules": adapters, "max_adapters": 8}}} if system == "para" else {}
    llm = LLM(model=str(base), dtype="float32", max_model_len=512, max_num_seqs=32, seed=0,
              enforce_eager=args.eager, gpu_memory_utilization=0.2, **extra)
    names = list(adapters)
    params = [SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True,
                             extra_args={"para_adapter": names[i % len(names)]} if system == "para" else None)
              for i in range(args.batch)]
    prompts = [{"prompt_token_ids": list(range(10 + i, 74 + i))} for i in range(args.batch)]
    llm.generate(prompts, params, use_tqdm=False)  # warm-up (compiles, fills slots)
    profiler = cProfile.Profile()
    began = time.perf_counter()
    profiler.enable()
    for _ in range(args.repeats):
        llm.generate(prompts, params, use_tqdm=False)
    profiler.disable()
    wall = time.perf_counter() - began
    del llm
    return wall / (args.repeats * args.tokens), pstats.Stats(profiler)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--eager", action="store_true")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="random", choices=("random", "smollm2-135m"),
                   help="random: the load test's full-mode random-weight shape; smollm2-135m: the real base")
    args = p.parse_args()
    from bench.in_process import build_full_model

    _, base, adapters = build_full_model("profile_step_", 8, args.model)
    steps = args.repeats * args.tokens
    for system in ("plain", "para", "plain", "para"):
        per_step, stats = run(system, base, adapters, args)
        print(f"{system}: {per_step * 1000:.2f} ms per decode step "
              f"(batch {args.batch}, {'eager' if args.eager else 'compiled'})")
        if system == "para":
            for (path, _, func), (_, calls, _, cum, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][3]):
                if "vllm_para" in path and func in PARA_FUNCS:
                    print(f"    {Path(path).name}:{func}: {cum / steps * 1000:.3f} ms per step ({calls} calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
