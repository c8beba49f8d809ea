"""Base tenants keep chunked prefill, timed inside the engine: the mixed scenario of
`bench/mixed_itl.py` (base requests decoding while long prompts arrive) with a plain and a
PARA engine alive in ONE process, so every inter-token gap is engine time, not client scheduling.

    .venv/bin/python -m bench.mixed_itl_step --dtype float32 --rounds 10 \
        --out bench/results/mixed-itl-step-float32-<date>

Why this exists: over HTTP on a 2-core VM, the client's gaps are dominated by three busy
processes sharing two cores (a smoke run saw a whole 24-token stream arrive in one burst).
Here both engines run in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0: the idle engine costs
nothing), the driver calls `LLMEngine.step()` itself and stamps each base stream's token when
the step that produced it returns. Both engines: chunked prefill on, the same
`--batched-tokens` step budget, the same token-id prompts.

One pass: `--streams` base requests (`--stream-tokens`-token prompts) decode `--tokens` tokens
each; after `--decode-before` steps an injector adds, one after another (the next when the
previous has finished), `--long-prompts` pairs of a long base prompt (`--long-tokens`, several
step budgets: chunked in both engines) and a `--para-tokens` prompt below the budget that names
a PARA adapter in the PARA engine (prefilled in one step: its vectors need its last token) and
no adapter in the plain engine. Each round runs one pass per engine in ABBA order; the
PARA/plain ratio of base ITL p99 is taken per round. Target: median <= 1.10.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench import mixed_itl as M  # noqa: E402
from bench import protocol as P  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--mode", choices=("small", "full"), default="full", help="the load test's model size")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--streams", type=int, default=4, help="base requests decoding while prompts arrive")
    p.add_argument("--tokens", type=int, default=64, help="tokens each base stream decodes")
    p.add_argument("--stream-tokens", type=int, default=16, help="prompt length of a base stream")
    p.add_argument("--decode-before", type=int, default=4, help="engine steps before the first injection")
    p.add_argument("--long-prompts", type=int, default=4, help="long base prompts (each followed by a PARA prompt)")
    p.add_argument("--long-tokens", type=int, default=700)
    p.add_argument("--para-tokens", type=int, default=150)
    p.add_argument("--batched-tokens", type=int, default=256, help="max_num_batched_tokens of both engines")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--eager", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def scenario(seed: int, args, vocab: int) -> tuple[list[list[int]], list[tuple[list[int], bool]]]:
    """(stream prompts, injected jobs as (prompt, uses the adapter)): random token ids, a
    function of `seed` alone, so both engines of a round get the same work."""
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(10, vocab) for _ in range(n)]

    streams = [ids(args.stream_tokens) for _ in range(args.streams)]
    jobs = []
    for _ in range(args.long_prompts):
        jobs += [(ids(args.long_tokens), False), (ids(args.para_tokens), True)]
    return streams, jobs


def run_pass(engine, streams, jobs, adapter: str | None, args) -> dict:
    """Drive `engine` step by step through one pass; returns `M.gap_metrics` of the base
    streams plus the number of injected jobs."""
    from vllm import SamplingParams

    greedy = dict(temperature=0.0, ignore_eos=True)
    tag = f"{time.monotonic_ns()}"
    for i, prompt in enumerate(streams):
        engine.add_request(f"s{i}-{tag}", {"prompt_token_ids": prompt},
                           SamplingParams(max_tokens=args.tokens, **greedy))
    arrivals: dict[str, list[float]] = {}
    pending, current, steps, injected = list(jobs), None, 0, 0
    began = time.perf_counter()
    while engine.has_unfinished_requests():
        if current is None and pending and steps >= args.decode_before:
            prompt, uses_adapter = pending.pop(0)
            current = f"j{injected}-{tag}"
            extra = {"para_adapter": adapter} if uses_adapter and adapter else None
            engine.add_request(current, {"prompt_token_ids": prompt},
                               SamplingParams(max_tokens=1, extra_args=extra, **greedy))
            injected += 1
        outputs = engine.step()
        now = time.perf_counter()
        steps += 1
        for out in outputs:
            if out.request_id.startswith("s"):
                arrivals.setdefault(out.request_id.split("-")[0], []).append(now)
            elif current is not None and out.request_id.startswith(current) and out.finished:
                current = None
    elapsed = time.perf_counter() - began
    gaps = [[b - a for a, b in zip(ts, ts[1:])] for ts in arrivals.values()]
    if sum(len(ts) for ts in arrivals.values()) != args.streams * args.tokens:
        raise RuntimeError(f"expected {args.streams} x {args.tokens} stream tokens, got "
                           f"{ {k: len(v) for k, v in arrivals.items()} }")
    return {**M.gap_metrics(gaps, elapsed), "injected": injected, "steps": steps}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process (set here: tests import us)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    from bench import adapters as ad
    from bench.systems import MODES

    work = Path(tempfile.mkdtemp(prefix="mixed_itl_step_"))
    spec = MODES[args.mode].model
    base = ad.build_base(spec, work / "base")
    adapters = ad.build_para_adapters(base, work / "para", 1)
    adapter = next(iter(adapters))
    common = dict(model=str(base), dtype=args.dtype, max_model_len=args.max_model_len, max_num_seqs=16, seed=0,
                  enforce_eager=args.eager, gpu_memory_utilization=0.2, enable_chunked_prefill=True,
                  max_num_batched_tokens=args.batched_tokens)
    llms = {"plain": LLM(**common),
            "para": LLM(**common, additional_config={"para": {"modules": adapters, "max_adapters": 1}})}
    vocab = llms["plain"].get_tokenizer().vocab_size
    for system, llm in llms.items():  # warm-up pass per engine, excluded
        run_pass(llm.llm_engine, *scenario(1, args, vocab), adapter if system == "para" else None, args)
    ms: list[P.Measurement] = []
    for r in range(args.rounds):
        work_of_round = scenario(1000 + r, args, vocab)
        for system in P.round_order(M.SYSTEMS, r):
            m = run_pass(llms[system].llm_engine, *work_of_round, adapter if system == "para" else None, args)
            print(f"round {r} {system}: " + ", ".join(f"{k} {m[k]:.1f}" for k in M.METRICS) + f", steps {m['steps']}",
                  flush=True)
            ms.append(P.Measurement(r, system, args.streams, m, slot=len(ms)))
    setup = f"""Timed inside the engine: `bench/mixed_itl_step.py`, a plain and a PARA engine in one process
(engine core in-process), the driver stamping each base token when the `LLMEngine.step()` that made
it returns: no client, no HTTP, no process scheduling in the gaps.
Model: the load test's {args.mode} model ({spec}), {args.dtype}, {'eager' if args.eager else 'compiled'};
both engines chunked prefill on, `max_num_batched_tokens={args.batched_tokens}`. {args.streams} base streams
({args.stream_tokens}-token prompts) decode {args.tokens} tokens each; after {args.decode_before} steps an
injector adds, one after another, {args.long_prompts} long base prompts ({args.long_tokens} tokens: chunked in
both engines), each followed by a {args.para_tokens}-token prompt that names a PARA adapter in the PARA engine
(prefilled in one step) and no adapter in the plain engine. {args.rounds} rounds in ABBA order
({' | '.join(' '.join(P.round_order(M.SYSTEMS, r)) for r in range(min(args.rounds, 4)))}\
{' ...' if args.rounds > 4 else ''}),
the same token ids for both engines in a round; a warm-up pass per engine excluded. Medians [min-max] over rounds.
Machine: {P.machine()}; {time.strftime('%Y-%m-%d %H:%M')}.

Reproduce: `.venv/bin/python -m bench.mixed_itl_step --mode {args.mode} --dtype {args.dtype} \
--rounds {args.rounds}`."""
    out = args.out or Path(tempfile.mkdtemp(prefix="mixed_itl_step_out_"))
    out.mkdir(parents=True, exist_ok=True)
    M.write_results(out, ms, args, setup)
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
