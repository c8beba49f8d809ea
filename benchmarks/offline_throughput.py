"""Offline throughput: PARA (8 adapters round-robin) vs the same prompts with no
adapter, in ONE vLLM engine, on a Llama-shaped model where matmuls dominate.

    .venv/bin/python benchmarks/offline_throughput.py [--layers 4] [--reps 3]

Reports output tokens/s for each (median over repetitions, order alternated),
the PARA/base ratio, and the prefill (TTFT) overhead measured as the wall time
of a max_tokens=1 pass over all prompts. Writes benchmarks/results/offline_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

RESULTS = Path(__file__).parent / "results"


def build(workdir: Path, args) -> tuple[Path, dict[str, str]]:
    from vllm_para.tiny_models import build_random_adapter, build_tiny_model

    model = build_tiny_model(
        workdir / "model", hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64, num_key_value_heads=4,
        head_dim=64, initializer_range=0.02,
    )
    adapters = {
        f"tenant{i}": str(build_random_adapter(model, workdir / f"tenant{i}", seed=i, up_std=0.05))
        for i in range(args.adapters)
    }
    return model, adapters


def prompts(n: int, length: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(10, 500) for _ in range(length)]} for _ in range(n)]


def timed_generate(llm, batch, params) -> float:
    start = time.perf_counter()
    outs = llm.generate(batch, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == params[0].max_tokens for o in outs)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    with tempfile.TemporaryDirectory() as tmp:
        model, adapters = build(Path(tmp), args)
        llm = LLM(
            model=str(model), dtype="float32", max_model_len=1024, max_num_seqs=args.prompts, seed=0,
            gpu_memory_utilization=0.2,
            additional_config={"para": {"modules": adapters, "max_adapters": args.adapters}},
        )
        batch = prompts(args.prompts, args.prompt_len)
        names = list(adapters)

        def params(max_tokens: int, with_adapters: bool):
            return [
                SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                               extra_args={"para_adapter": names[i % len(names)]} if with_adapters else None)
                for i in range(len(batch))
            ]

        timed_generate(llm, batch, params(4, True))  # warm-up: adapters into slots, caches warm
        timed_generate(llm, batch, params(4, False))
        runs = {"base": [], "para": [], "base_prefill": [], "para_prefill": []}
        for rep in range(args.reps):
            order = [("base", False), ("para", True)] if rep % 2 == 0 else [("para", True), ("base", False)]
            for name, with_adapters in order:
                runs[name].append(timed_generate(llm, batch, params(args.output_len, with_adapters)))
                runs[f"{name}_prefill"].append(timed_generate(llm, batch, params(1, with_adapters)))
        del llm

    tokens = args.prompts * args.output_len
    median = {k: statistics.median(v) for k, v in runs.items()}
    ratios = [b / p for b, p in zip(runs["base"], runs["para"])]  # (tokens/p) / (tokens/b)
    result = {
        "config": vars(args),
        "seconds": runs,
        "base_tokens_per_s": tokens / median["base"],
        "para_tokens_per_s": tokens / median["para"],
        "para_over_base": statistics.median(ratios),
        "prefill_overhead": statistics.median(p / b for p, b in zip(runs["para_prefill"], runs["base_prefill"])) - 1,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "offline_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    table = (
        f"Offline throughput, one engine, hidden {args.hidden}, {args.layers} layers, {args.prompts} prompts x "
        f"{args.prompt_len} tokens -> {args.output_len} tokens, {args.adapters} adapters round-robin, "
        f"median of {args.reps}\n\n"
        "| run | output tokens/s |\n|---|---|\n"
        f"| base (no adapter) | {result['base_tokens_per_s']:.1f} |\n"
        f"| PARA ({args.adapters} adapters) | {result['para_tokens_per_s']:.1f} |\n\n"
        f"PARA / base throughput: **{result['para_over_base']:.3f}x** (target >= 0.95x)  \n"
        f"Prefill (TTFT) overhead of PARA: **{100 * result['prefill_overhead']:+.1f}%** (max_tokens=1 pass)  \n"
        f"Per-repetition PARA/base ratios: {', '.join(f'{x:.3f}' for x in sorted(ratios))} "
        "(base and PARA alternate within each repetition; the spread is this 2-core VM's run-to-run noise)\n"
    )
    (RESULTS / "offline_throughput.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
