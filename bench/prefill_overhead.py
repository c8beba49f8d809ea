"""What a PARA prompt costs the engine at prefill, in milliseconds, measured in pairs in ONE engine.

    .venv/bin/python -m bench.prefill_overhead --dtype bfloat16 --batch 1 --rounds 60

One in-process PARA engine (VLLM_ENABLE_V1_MULTIPROCESSING=0) on the load test's full model.
Each round runs two prefill passes (B new prompts, max_tokens=1) back to back in ABBA order:
one whose requests name adapters (B distinct adapters) and one whose requests name none. Both
go through the same wrapped, compiled model (requests without an adapter read page 0), so the
per-round difference is exactly the work a PARA prompt adds: the step plan on the host
(`PARARuntime.plan_step`), the VG op at every layer (`vllm_para::compute_vectors`) and its
page bookkeeping. That is the fixed per-request cost which, at high concurrency, is amortized
over the fewest engine milliseconds per request (see docs/performance.md).

With --profile, it also prints torch.profiler's op table for 40 passes with adapters: the
eager calls under `vllm_para::compute_vectors` and what each costs inside a real forward.
Writes report.md and result.json to --out when given.
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
from bench.report import report_head  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, batch=1, rounds=60)  # --batch: prompts per prefill pass, distinct adapters
    p.add_argument("--profile", action="store_true")
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    from vllm import LLM, SamplingParams

    spec, base, adapters = build_full_model("prefill_overhead_", args.adapters, args.model, args.adapter_kind)
    names = list(adapters)
    llm = LLM(model=str(base), dtype=args.dtype, max_model_len=512, max_num_seqs=max(args.batch, 16), seed=0,
              gpu_memory_utilization=0.2,
              additional_config={"para": {"modules": adapters, "max_adapters": args.adapters}})

    def timed(with_adapter: bool, seed: int) -> float:
        params = [SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True,
                                 extra_args={"para_adapter": names[(seed + i) % len(names)]} if with_adapter else None)
                  for i in range(args.batch)]
        start = time.perf_counter()
        llm.generate(prompts(args.batch, args.prompt_len, seed), params, use_tqdm=False)
        return time.perf_counter() - start

    systems = ["adapter", "none"]
    for k in range(5):  # warm-up (excluded): every adapter's slot filled, both paths run
        for s in systems:
            timed(s == "adapter", 10 + 7 * k)
    rows = []
    for r in range(args.rounds):
        for s in P.round_order(systems, r):
            rows.append({"round": r, "system": s, "prefill_s": timed(s == "adapter", 1000 * (r + 10) + (s == "none"))})
    by = {(x["round"], x["system"]): x["prefill_s"] for x in rows}
    diff_ms = P.spread(1000 * (by[(r, "adapter")] - by[(r, "none")]) for r in range(args.rounds))
    ratio = P.spread(by[(r, "adapter")] / by[(r, "none")] for r in range(args.rounds))
    per = {s: P.spread(1000 * x["prefill_s"] for x in rows if x["system"] == s) for s in systems}
    interval = P.median_interval(by[(r, "adapter")] / by[(r, "none")] for r in range(args.rounds))
    kind = "PEFT (IA)^3" if args.adapter_kind == "ia3" else "PARA"
    lines = report_head(f"{kind} adapters' per-prompt prefill cost, one engine ({args.dtype}, {args.batch} prompt(s) "
                        "per pass)", args.label) + [
        f"- model: {spec.describe()}, compiled; "
        f"{args.adapters} {kind} adapters, {args.batch} distinct per pass; {args.prompt_len}-token prompts",
        f"- {args.rounds} rounds, ABBA, each: a prefill pass (max_tokens=1) with adapters and one without, "
        "in the same PARA engine; warm-up excluded",
        f"- machine: {P.machine()}; date {time.strftime('%Y-%m-%d %H:%M')}", "",
        "| | median | min-max |", "|---|---|---|",
        f"| prefill pass, requests without adapter (ms) | {per['none'].median:.2f} | "
        f"{per['none'].lo:.2f}-{per['none'].hi:.2f} |",
        f"| prefill pass, requests with adapters (ms) | {per['adapter'].median:.2f} | "
        f"{per['adapter'].lo:.2f}-{per['adapter'].hi:.2f} |",
        f"| difference per pass, per round (ms) | {diff_ms.median:.3f} | {diff_ms.lo:.3f}-{diff_ms.hi:.3f} |",
        f"| difference per prompt (ms) | {diff_ms.median / args.batch:.3f} | |",
        f"| with / without, per round | {ratio.median:.3f} | {ratio.lo:.3f}-{ratio.hi:.3f} |",
        "",
        f"Distribution-free interval of the median with/without ratio: {interval.lo:.3f}-{interval.hi:.3f} "
        f"({100 * interval.coverage:.0f}% coverage); it "
        + ("contains" if interval.lo <= 1.0 <= interval.hi else "does not contain") + " 1.0.",
    ]
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for r in range(40):
                timed(True, 900000 + r)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        lines += ["", "torch.profiler, 40 passes with adapters (self CPU; profiler overhead included):", "",
                  "```", table, "```"]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        doc = {"config": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
               "diff_ms": {"median": diff_ms.median, "min": diff_ms.lo, "max": diff_ms.hi},
               "ratio": {"median": ratio.median, "min": ratio.lo, "max": ratio.hi}}
        (args.out / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
        (args.out / "report.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
