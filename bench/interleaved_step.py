"""Decode-step cost of PARA, measured in pairs: a plain and a PARA engine alive in ONE process,
their batches interleaved (A B B A ...), so both see the same machine state within a round.

    .venv/bin/python -m bench.interleaved_step --dtype bfloat16 --batch 16 --rounds 12

Why this exists: separate engine processes measured in ABBA rounds (offline_throughput.py,
bench/compare.py) are the honest end-to-end protocol, but on a 2-core VM the spread of
one system between rounds (up to 30%) is larger than the effect to find. Here both engines
run in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0: no busy-polling worker, so the idle engine
costs nothing while the other one runs), each round times one `generate` of the same batch on
each engine back to back in ABBA order, and the PARA/plain ratio is taken per round: drift
slower than a few hundred milliseconds cancels.

Per round and engine it times a decode pass (B prompts -> T tokens, ignore_eos) and a
prefill pass (B new prompts, max_tokens=1); the decode-step time is (decode - prefill) / (T - 1).
Prompts are new in every pass (no prefix-cache hits). Writes report.md and result.json to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench.in_process import add_common_args, build_full_model  # noqa: E402  (first: sets vLLM's env)
from bench.offline_throughput import prompts  # noqa: E402  (the same seeded prompts)
from bench import protocol as P  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, batch=16, rounds=40)
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--eager", action="store_true")
    p.add_argument("--para-first", action="store_true",
                   help="build the PARA engine before the plain one (the default builds plain first); an "
                        "engine's own placement in memory can bias an in-process pair, and this flips it")
    args = p.parse_args(argv)
    from vllm import LLM, SamplingParams

    spec, base, adapters = build_full_model("interleaved_step_", args.adapters, args.model)
    names = list(adapters)
    common = dict(model=str(base), dtype=args.dtype, max_model_len=512, max_num_seqs=max(args.batch, 16), seed=0,
                  enforce_eager=args.eager, gpu_memory_utilization=0.2)
    builders = {"plain": lambda: LLM(**common),
                "para": lambda: LLM(**common, additional_config={"para": {"modules": adapters,
                                                                          "max_adapters": args.adapters}})}
    built = {name: builders[name]() for name in (("para", "plain") if args.para_first else ("plain", "para"))}
    engines = {"plain": built["plain"], "para": built["para"]}  # ABBA order below: plain first in round 0

    def timed(system: str, seed: int, max_tokens: int) -> float:
        batch = prompts(args.batch, args.prompt_len, seed)
        params = [SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                                 extra_args={"para_adapter": names[i % len(names)]} if system == "para" else None)
                  for i in range(args.batch)]
        start = time.perf_counter()
        outs = engines[system].generate(batch, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        assert all(len(o.outputs[0].token_ids) == max_tokens for o in outs)
        return elapsed

    for system in engines:  # warm-up, excluded
        timed(system, 1, 4)
        timed(system, 2, 1)
    rows = []
    for r in range(args.rounds):
        for system in P.round_order(list(engines), r):
            seed = 1000 * (r + 10)  # the same prompts for both engines in a round, new in every pass
            decode = timed(system, seed, args.tokens)
            prefill = timed(system, seed + 1, 1)
            rows.append({"round": r, "system": system, "decode_s": decode, "prefill_s": prefill,
                         "step_ms": 1000 * (decode - prefill) / (args.tokens - 1)})
            print(f"round {r} {system}: step {rows[-1]['step_ms']:.2f} ms, prefill {prefill * 1000:.1f} ms",
                  flush=True)

    def ratios(metric: str) -> P.Spread:
        by = {(x["round"], x["system"]): x[metric] for x in rows}
        return P.spread(by[(r, "para")] / by[(r, "plain")] for r in range(args.rounds))

    step, prefill, decode = ratios("step_ms"), ratios("prefill_s"), ratios("decode_s")
    per = {s: P.spread(x["step_ms"] for x in rows if x["system"] == s) for s in engines}
    doc = {"config": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
           "step_ratio": {"median": step.median, "min": step.lo, "max": step.hi},
           "prefill_ratio": {"median": prefill.median, "min": prefill.lo, "max": prefill.hi},
           "decode_pass_ratio": {"median": decode.median, "min": decode.lo, "max": decode.hi}}
    lines = [f"# Decode step, PARA vs plain, interleaved in one process ({args.dtype}, batch {args.batch})", "",
             f"- model: {spec.describe()}, "
             f"{args.adapters} PARA adapters round-robin, {'eager' if args.eager else 'compiled'}; engines built "
             f"{'PARA first' if args.para_first else 'plain first'}",
             f"- {args.rounds} rounds, ABBA order, each: decode pass ({args.batch} x {args.prompt_len} -> "
             f"{args.tokens} tokens) and prefill pass (max_tokens=1) per engine; warm-up excluded",
             f"- machine: {P.machine()}; date {time.strftime('%Y-%m-%d %H:%M')}", "",
             "| | median | min-max |", "|---|---|---|",
             f"| plain decode step (ms) | {per['plain'].median:.2f} | {per['plain'].lo:.2f}-{per['plain'].hi:.2f} |",
             f"| PARA decode step (ms) | {per['para'].median:.2f} | {per['para'].lo:.2f}-{per['para'].hi:.2f} |",
             f"| PARA/plain decode step (per-round ratio) | {step.median:.3f} | {step.lo:.3f}-{step.hi:.3f} |",
             f"| PARA/plain whole decode pass, prefill included (per-round ratio) | {decode.median:.3f} | "
             f"{decode.lo:.3f}-{decode.hi:.3f} |",
             f"| PARA/plain prefill pass (per-round ratio) | {prefill.median:.3f} | "
            f"{prefill.lo:.3f}-{prefill.hi:.3f} |"]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
        (args.out / "report.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
