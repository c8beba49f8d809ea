"""Offline throughput, ABBA protocol: engines one at a time, each system measured in every round.

    .venv/bin/python -m bench.offline_throughput                        # base vs PARA, float32
    .venv/bin/python -m bench.offline_throughput --dtype bfloat16 --systems base,para,para-noadapter,lora16

Systems (each its own vLLM engine, on the same locally built Llama-shaped model):

    base            a plain engine (no PARA config), requests without adapter
    para            a PARA engine with N adapters, requests round-robin over them
    para-noadapter  the same PARA engine, requests without adapter (what PARA costs base tenants)
    lora16          a vLLM multi-LoRA engine, N rank-16 adapters on every linear layer, round-robin

Protocol (bench/protocol.py): round r runs the systems forward when r is even and
reversed when r is odd (`base para | para base | ...`), --rounds measured rounds.
Exactly one engine exists at a time: every engine life runs in its own subprocess
(`--worker`), which builds the engine, warms it up (a short generate pass and a prefill
pass on their own prompts, recorded but excluded), measures its slot(s) and exits
before the next engine starts. Each slot measures

    throughput pass  P prompts x L prompt tokens -> O output tokens (ignore_eos)  -> output tok/s
    prefill pass     P other prompts, max_tokens=1                             -> prefill_s (the TTFT proxy)

Prompts are seeded by (round, pass): every system sees the same prompts in a round, and
no pass is ever served from another pass's prefix cache (each pass's prompts are new to
the engine). Ratios (PARA / base, ...) are computed within each round, then summarized
by their median and min-max over rounds.

Engine reuse (--reuse): `never` (default) builds a fresh engine for every slot. `adjacent`
lets the two adjacent slots of one system at a round boundary (`A B | B A`) share an
engine: prompts are new in every slot, so the only difference is that the second slot
follows a measured slot instead of the warm-up; the boundaries alternate between systems,
so the second uses are spread equally when the number of rounds is odd (or even with
--warmup-rounds 1). Each slot is marked fresh/reused in rounds.csv.

Writes <out>/report.md, rounds.csv and result.json (default out:
bench/results/offline-<dtype>/).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench import protocol as P  # noqa: E402  (pure Python: no vLLM import)
from bench.report import report_head  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

RESULTS = Path(__file__).parent / "results"
SYSTEMS = ("base", "para", "para-noadapter", "lora16")
RATIOS = [  # (label, numerator, denominator, metric)
    ("PARA/base output tok/s", "para", "base", "output_tokens_per_s"),
    ("PARA/base prefill time", "para", "base", "prefill_s"),
    ("PARA-engine no-adapter/base output tok/s", "para-noadapter", "base", "output_tokens_per_s"),
    ("PARA-engine no-adapter/base prefill time", "para-noadapter", "base", "prefill_s"),
    ("PARA/LoRA-16 output tok/s", "para", "lora16", "output_tokens_per_s"),
]
WARMUP_SEED, THROUGHPUT_SEED, PREFILL_SEED = 999, 1000, 2000
WARMUP_TOKENS = 4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default="base,para", help=f"comma-separated, from {','.join(SYSTEMS)}")
    p.add_argument("--rounds", type=int, default=4, help=f"measured ABBA rounds (>= {P.MIN_ROUNDS} for a valid run)")
    p.add_argument("--warmup-rounds", type=int, default=0)
    p.add_argument("--reuse", choices=("never", "adjacent"), default="never")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results/offline-<dtype>)")
    p.add_argument("--label", default=None, help="a line quoted at the top of report.md")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # internal: one engine life
    args = p.parse_args(argv)
    args.systems = [s for s in args.systems.split(",") if s]
    if not args.systems or set(args.systems) - set(SYSTEMS):
        p.error(f"--systems: choose from {','.join(SYSTEMS)}")
    if args.out is None:
        args.out = RESULTS / f"offline-{args.dtype}"
    return args


# ---------------------------------------------------------------- the parent: schedule, one engine at a time


def run_protocol(args: argparse.Namespace, run_life) -> dict:
    """Run every engine life of the ABBA schedule through `run_life(life_spec) -> result` (one at a time)
    and write the report. `run_life` is a subprocess in real runs, a fake in the unit test."""
    slots = P.schedule(args.systems, args.rounds, args.warmup_rounds, reuse=args.reuse == "adjacent")
    args.out.mkdir(parents=True, exist_ok=True)
    _log(f"ABBA schedule ({len(P.lives(slots))} engines): {P.order_string(slots)}")
    ms: list[P.Measurement] = []
    lives_log = []
    t0 = time.monotonic()
    level = args.prompts
    tokens = args.prompts * args.output_len
    for i, life in enumerate(P.lives(slots)):
        system = life[0].system
        spec = {"system": system, "slots": [{"index": s.index, "round": s.round} for s in life]}
        start = time.monotonic() - t0
        _log(f"[{system}] engine {i}: slot(s) {[s.index for s in life]}, round(s) {[s.round for s in life]}")
        result = run_life(spec)
        lives_log.append({"life": i, "system": system, "start_s": round(start, 1),
                          "stop_s": round(time.monotonic() - t0, 1), "startup_s": result.get("startup_s")})
        w = result["warmup"]
        ms.append(P.Measurement(life[0].round, system, level, _metrics(w, args.prompts * WARMUP_TOKENS, args),
                                warmup=True,
                                slot=life[0].index))
        for slot, r in zip(life, result["slots"]):
            assert (r["index"], r["round"]) == (slot.index, slot.round), (r, slot)
            m = P.Measurement(slot.round, system, level, _metrics(r, tokens, args), warmup=slot.warmup,
                              slot=slot.index, fresh=slot.fresh)
            _log(f"[{system}] round {slot.round}: {m.metrics['output_tokens_per_s']:.1f} output tok/s, "
                 f"prefill {m.metrics['prefill_s']:.3f} s")
            ms.append(m)
        result_doc = write_results(ms, args, slots, lives_log)
    return result_doc


def _metrics(r: dict, tokens: int, args) -> dict:
    return {"output_tokens_per_s": tokens / r["throughput_s"], "throughput_s": r["throughput_s"],
            "prefill_s": r["prefill_s"], "failures": 0, "requests": args.prompts}


def write_results(ms: list[P.Measurement], args, slots, lives_log) -> dict:
    fields = ["slot", "round", "warmup", "fresh", "system", "output_tokens_per_s", "throughput_s", "prefill_s"]
    with open(args.out / "rounds.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for m in ms:
            w.writerow({"slot": m.slot, "round": m.round, "warmup": int(not m.measured), "fresh": int(m.fresh),
                        "system": m.system, **{k: f"{m.metrics[k]:.4f}" for k in fields[5:]}})
    per_sys = {metric: P.per_system(ms, metric) for metric in ("output_tokens_per_s", "prefill_s")}
    ratios = {}
    for label, num, den, metric in RATIOS:
        pairs = P.round_ratios(ms, num, den, metric).get(args.prompts)
        if pairs:
            s = P.spread(x for _, x in pairs)
            ratios[label] = {"median": s.median, "min": s.lo, "max": s.hi, "per_round": [x for _, x in pairs]}
    verdicts = P.targets(ms, ttft="prefill_s", level_label="batch")
    doc = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"},
        "order": P.order_string(slots), "engines": lives_log,
        "systems": {s: {m: {"median": sp.median, "min": sp.lo, "max": sp.hi, "per_round": list(sp.values)}
                        for m, table in per_sys.items() if (sp := table.get((s, args.prompts)))}
                    for s in args.systems},
        "ratios": ratios, "warmups_excluded": sum(not m.measured for m in ms),
        "targets": [{"target": v.target, "verdict": v.verdict, "detail": v.detail} for v in verdicts],
    }
    (args.out / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = report_head(f"Offline throughput, ABBA protocol ({args.dtype})", args.label) + [
        f"- model: Llama-shaped, random weights, hidden {args.hidden}, intermediate {args.intermediate}, "
        f"{args.layers} layers, {args.heads} heads / {args.kv_heads} KV heads (head_dim 64), dtype {args.dtype}",
        f"- batch: {args.prompts} prompts x {args.prompt_len} tokens -> {args.output_len} output tokens "
        f"(ignore_eos); prefill pass: {args.prompts} other prompts, max_tokens=1; {args.adapters} adapters "
        "round-robin",
        f"- order: `{P.order_string(slots)}` ({len(P.lives(slots))} engines, one at a time, each in its own "
        "process; `*` = reused engine)",
        f"- warm-up: every engine runs a 4-token pass and a prefill pass on its own prompts first "
        f"({doc['warmups_excluded']} warm-up measurements, all excluded)",
        f"- machine: {P.machine()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}", "",
        "## Per system (median [min-max] over measured rounds)", "",
        "| system | output tok/s | prefill pass s | per-round output tok/s |", "|---|---|---|---|"]
    for s in args.systems:
        t, p = per_sys["output_tokens_per_s"].get((s, args.prompts)), per_sys["prefill_s"].get((s, args.prompts))
        if t:
            lines.append(f"| {s} | {t.fmt(1)} | {p.fmt(3)} | {', '.join(f'{x:.1f}' for x in t.values)} |")
    lines += ["", "## Ratios (median [min-max] of per-round ratios)", "", "| ratio | median | min-max | per round |",
              "|---|---|---|---|"]
    for label, r in ratios.items():
        lines.append(f"| {label} | {r['median']:.3f} | {r['min']:.3f}-{r['max']:.3f} | "
                     f"{', '.join(f'{x:.3f}' for x in r['per_round'])} |")
    lines += ["", "## Targets", "", "| target | verdict | detail |", "|---|---|---|"]
    lines += [f"| {v.target} | **{v.verdict}** | {v.detail} |" for v in verdicts if "failed" not in v.target]
    lines += ["", "The TTFT target is judged on the prefill pass (wall time of a max_tokens=1 pass over the "
              "batch), the offline stand-in for TTFT."]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    return doc


def subprocess_life(args: argparse.Namespace, workdir: Path):
    """run_life for real runs: each engine life in its own process, which exits before the next starts."""

    def run(spec: dict) -> dict:
        spec_file = workdir / f"life_{spec['slots'][0]['index']}.json"
        spec_file.write_text(json.dumps({**spec, "workdir": str(workdir)}))
        argv = [sys.executable, "-m", "bench.offline_throughput", "--worker", str(spec_file), *_passthrough(args)]
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        log = workdir / f"life_{spec['slots'][0]['index']}.log"
        log.write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"engine worker failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
        return json.loads(spec_file.with_suffix(".out.json").read_text())

    return run


def _passthrough(args) -> list[str]:
    keys = ("dtype", "hidden", "intermediate", "layers", "heads", "kv_heads", "adapters", "prompts", "prompt_len",
            "output_len", "seed")
    return [x for k in keys for x in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]


def build(workdir: Path, args, systems) -> None:
    """The base model and every system's adapters, built once before any engine starts."""
    from bench import adapters as ad
    from testkit.tiny_models import build_random_adapter, build_tiny_model

    model = build_tiny_model(workdir / "model", hidden_size=args.hidden, intermediate_size=args.intermediate,
                             num_hidden_layers=args.layers, num_attention_heads=args.heads,
                             num_key_value_heads=args.kv_heads, head_dim=64, initializer_range=0.02)
    if {"para", "para-noadapter"} & set(systems):
        for i in range(args.adapters):
            build_random_adapter(model, workdir / f"tenant{i}", seed=i, up_std=0.05)
    if "lora16" in systems:
        ad.build_lora_adapters(model, workdir / "lora16", "lora16", args.adapters, 16, ad.ALL_LINEAR, args.seed)


# ---------------------------------------------------------------- the worker: one engine life


def prompts(n: int, length: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(10, 500) for _ in range(length)]} for _ in range(n)]


def worker(args) -> None:
    spec = json.loads(args.worker.read_text())
    workdir, system = Path(spec["workdir"]), spec["system"]
    from vllm import LLM, SamplingParams

    kwargs = dict(model=str(workdir / "model"), dtype=args.dtype, max_model_len=1024, max_num_seqs=args.prompts,
                  seed=0, gpu_memory_utilization=0.2)
    names = [f"tenant{i}" for i in range(args.adapters)]
    lora = None
    if system in ("para", "para-noadapter"):
        kwargs["additional_config"] = {"para": {"modules": {n: str(workdir / n) for n in names},
                                                "max_adapters": args.adapters}}
    elif system == "lora16":
        from vllm.lora.request import LoRARequest

        kwargs.update(enable_lora=True, max_loras=args.adapters, max_lora_rank=16)
        lora = [LoRARequest(f"lora16-{i}", i + 1, str(workdir / "lora16" / f"lora16-{i}"))
                for i in range(args.adapters)]
    began = time.perf_counter()
    llm = LLM(**kwargs)
    startup = time.perf_counter() - began

    def timed(batch, max_tokens: int) -> float:
        params = [SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                                 extra_args={"para_adapter": names[i % len(names)]} if system == "para" else None)
                  for i in range(len(batch))]
        extra = {"lora_request": [lora[i % len(lora)] for i in range(len(batch))]} if lora else {}
        start = time.perf_counter()
        outs = llm.generate(batch, params, use_tqdm=False, **extra)
        elapsed = time.perf_counter() - start
        assert all(len(o.outputs[0].token_ids) == max_tokens for o in outs)
        return elapsed

    n, length = args.prompts, args.prompt_len
    out = {"startup_s": startup,
           "warmup": {"throughput_s": timed(prompts(n, length, WARMUP_SEED), WARMUP_TOKENS),
                      "prefill_s": timed(prompts(n, length, WARMUP_SEED + 1), 1)}}
    out["slots"] = []
    for slot in spec["slots"]:
        r = slot["round"] + 100  # warm-up rounds are negative
        tput = timed(prompts(n, length, THROUGHPUT_SEED * 1000 + r), args.output_len)
        prefill = timed(prompts(n, length, PREFILL_SEED * 1000 + r), 1)
        out["slots"].append({**slot, "throughput_s": tput, "prefill_s": prefill})
    args.worker.with_suffix(".out.json").write_text(json.dumps(out))


def _log(msg: str) -> None:
    print(f"[offline {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return None
    with tempfile.TemporaryDirectory(prefix="vllm_para_offline_") as tmp:
        _log(f"building the model and adapters in {tmp}")
        build(Path(tmp), args, args.systems)
        doc = run_protocol(args, subprocess_life(args, Path(tmp)))
    print((args.out / "report.md").read_text())
    return doc


if __name__ == "__main__":
    main()
