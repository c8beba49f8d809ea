"""Base tenants keep chunked prefill: inter-token latency of running base requests while
long prompts arrive, in a PARA engine vs a plain vLLM engine (ABBA protocol).

    python -m bench.mixed_itl                        # full model, float32, 3 rounds
    python -m bench.mixed_itl --dtype bfloat16 --rounds 3
    python -m bench.mixed_itl --mode small --rounds 3 --streams 2 --tokens 32   # minutes

Both servers get the same model, `--max-num-batched-tokens B` and chunked prefill on (vLLM's
default). In every slot, `--streams` base requests decode `--tokens` tokens each (streamed;
their inter-token gaps are what is measured), while an injector sends, one after another:

* long base prompts (`--long-words`, several times B): chunked in both engines;
* PARA prompts that fit in one step (`--para-words`, below B): in the PARA engine they use an
  adapter and are prefilled in one step (their vectors need their last token); the plain
  engine gets the same prompts without an adapter.

A PARA engine that turned chunked prefill off for everyone would stall the base streams
behind every long prompt for a whole prefill; with per-request chunking (the PARA scheduler)
a step never holds more than B tokens in either engine. Target: base ITL p99 in the PARA
engine within 10% of the plain engine's (median of per-round ratios).

Results: bench/results/<run-id>/ (rounds.csv, summary.csv, report.md; no raw logs).
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import requests

from bench import adapters as ad
from bench import protocol as P
from bench.protocol import percentile
from bench.systems import MODES
from bench.traffic import WORDS

ROOT = Path(__file__).resolve().parents[1]
ITL_P99_MAX_VS_PLAIN = 1.10
SYSTEMS = ("plain", "para")
METRICS = ("itl_p50_ms", "itl_p99_ms", "itl_max_ms", "decode_tok_s")


def make_prompt(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))  # about one token per word


def _stream_gaps(url: str, model: str, prompt: str, tokens: int, out: list[float], errors: list[str]) -> None:
    """One streamed base request; appends the gaps between its content chunks (seconds)."""
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0.0, "ignore_eos": True,
            "stream": True}
    last = None
    try:
        with requests.post(url + "/v1/completions", json=body, stream=True, timeout=900) as r:
            if r.status_code != 200:
                errors.append(f"stream HTTP {r.status_code}: {r.text[:200]}")
                return
            for line in r.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                now = time.perf_counter()
                if last is not None:
                    out.append(now - last)
                last = now
    except requests.RequestException as exc:
        errors.append(f"stream: {exc}")


def _inject(url: str, jobs: list[tuple[str, str]], stop: threading.Event, errors: list[str]) -> int:
    sent = 0
    for model, prompt in jobs:
        if stop.is_set():
            break
        r = requests.post(url + "/v1/completions", timeout=900,
                          json={"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0})
        if r.status_code != 200:
            errors.append(f"inject HTTP {r.status_code}: {r.text[:200]}")
        sent += 1
    return sent


def measure(url: str, base_model: str, adapter: str | None, args, seed: int) -> dict:
    rng = random.Random(seed)
    stream_prompts = [make_prompt(rng, args.prompt_words) for _ in range(args.streams)]
    jobs = []
    for _i in range(args.long_prompts):
        jobs.append((base_model, make_prompt(rng, args.long_words)))
        jobs.append((adapter or base_model, make_prompt(rng, args.para_words)))
    gaps: list[list[float]] = [[] for _ in range(args.streams)]
    errors: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_stream_gaps, args=(url, base_model, p, args.tokens, g, errors))
               for p, g in zip(stream_prompts, gaps)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(args.inject_after)
    injected = [0]
    injector = threading.Thread(target=lambda: injected.__setitem__(0, _inject(url, jobs, stop, errors)))
    injector.start()
    for t in threads:
        t.join()
    stop.set()
    injector.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"measurement failed: {errors[:3]}")
    return {**gap_metrics(gaps, elapsed), "injected": injected[0]}


def gap_metrics(gaps: list[list[float]], elapsed: float) -> dict:
    """ITL statistics of one pass from each stream's inter-token gaps (seconds): p50, p99 and max
    in ms over all gaps pooled, and tokens per second (a stream's first token has no gap)."""
    flat = [g * 1000 for gs in gaps for g in gs]
    if not flat:
        raise RuntimeError("measurement failed: no inter-token gap recorded")
    return {"itl_p50_ms": statistics.median(flat), "itl_p99_ms": percentile(flat, 99), "itl_max_ms": max(flat),
            "decode_tok_s": (len(flat) + len(gaps)) / elapsed, "gaps": len(flat)}


def server_args(system: str, args, adapters: dict[str, str]) -> list[str]:
    common = ["--dtype", args.dtype, "--max-model-len", str(args.max_model_len), "--max-num-batched-tokens",
              str(args.batched_tokens), "--max-num-seqs", "16", "--seed", "0", "--enable-chunked-prefill"]
    if system == "para":
        return common + ["--enable-para", "--para-modules", *[f"{n}={p}" for n, p in adapters.items()]]
    return common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--mode", choices=sorted(MODES), default="full")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--streams", type=int, default=4, help="base requests decoding while prompts arrive")
    p.add_argument("--tokens", type=int, default=96, help="tokens each base stream decodes")
    p.add_argument("--prompt-words", type=int, default=16)
    p.add_argument("--long-prompts", type=int, default=4, help="long base prompts (each followed by a PARA prompt)")
    p.add_argument("--long-words", type=int, default=700)
    p.add_argument("--para-words", type=int, default=150)
    p.add_argument("--batched-tokens", type=int, default=256, help="--max-num-batched-tokens of both servers")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--inject-after", type=float, default=1.0, help="seconds of plain decoding before injecting")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--run-id", default=None)
    p.add_argument("--work-dir", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    import tempfile

    from testkit.serve_process import VLLMServer

    args = parse_args(argv)
    run_id = args.run_id or f"mixed-itl-{args.mode}-{args.dtype}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = args.out_dir / run_id
    out.mkdir(parents=True, exist_ok=True)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="mixed_itl_"))
    spec = MODES[args.mode].model
    base = ad.build_base(spec, work / "base")
    adapters = ad.build_para_adapters(base, work / "para", 1)
    adapter = next(iter(adapters))
    slots = P.schedule(SYSTEMS, args.rounds, reuse=True)  # adjacent slots share a server (balanced: odd rounds)
    print("ABBA schedule:", P.order_string(slots), flush=True)
    ms: list[P.Measurement] = []
    for life in P.lives(slots):
        system = life[0].system
        srv = VLLMServer(base, server_args(system, args, adapters), work / "logs" / f"{system}_{life[0].index}.log")
        with srv:
            srv.warm_up([str(base)] + ([adapter] if system == "para" else []))
            measure(srv.url, str(base), adapter if system == "para" else None, args, seed=10_000)  # warm-up pass
            for slot in life:
                m = measure(srv.url, str(base), adapter if system == "para" else None, args, seed=slot.round)
                print(f"round {slot.round} {system}: " + ", ".join(f"{k} {m[k]:.1f}" for k in METRICS), flush=True)
                ms.append(P.Measurement(slot.round, system, args.streams, m, slot=slot.index))
    write_results(out, ms, args)
    print(f"results: {out}")
    return 0


def served_setup(args) -> str:
    """The report's description of the served scenario (`main`)."""
    return f"""Model: Llama-shaped, {args.mode} mode ({MODES[args.mode].model}), {args.dtype}; both servers
`--max-num-batched-tokens {args.batched_tokens}`, chunked prefill on. {args.streams} base streams decode
{args.tokens} tokens each; after {args.inject_after:.0f} s an injector sends {args.long_prompts} long base prompts
(~{args.long_words} words: chunked in both engines), each followed by a ~{args.para_words}-word prompt that
uses a PARA adapter in the PARA engine (prefilled in one step) and no adapter in the plain engine.
ABBA order ({P.order_string(P.schedule(SYSTEMS, args.rounds, reuse=True))}; `*`: the server of the slot before),
{args.rounds} measured rounds, a warm-up pass per server excluded. Medians [min-max] over rounds.
Gaps are timed at the client.

Reproduce: `python -m bench.mixed_itl --mode {args.mode} --dtype {args.dtype} --rounds {args.rounds}`."""


def write_results(out: Path, ms: list[P.Measurement], args, setup: str | None = None) -> None:
    """rounds.csv, summary.csv and report.md of a mixed-scenario run; `setup` describes how it
    was measured (default: the served scenario of this module)."""
    with open(out / "rounds.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["round", "slot", "system", *METRICS, "gaps", "injected"])
        for m in ms:
            w.writerow([m.round, m.slot, m.system, *(f"{m.metrics[k]:.3f}" for k in METRICS), m.metrics["gaps"],
                        m.metrics["injected"]])
    level = args.streams
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["system", "metric", "median", "min", "max"])
        for metric in METRICS:
            for (system, _), s in sorted(P.per_system(ms, metric).items()):
                w.writerow([system, metric, f"{s.median:.3f}", f"{s.lo:.3f}", f"{s.hi:.3f}"])
    ratio = P.ratio_spreads(ms, "para", "plain", "itl_p99_ms").get(level)
    p50 = P.ratio_spreads(ms, "para", "plain", "itl_p50_ms").get(level)
    verdict = "PASS" if ratio and ratio.median <= ITL_P99_MAX_VS_PLAIN else "FAIL"
    rows = "\n".join(
        f"| {system} | " + " | ".join(P.per_system(ms, k)[(system, level)].fmt(1) for k in METRICS) + " |"
        for system in SYSTEMS)
    (out / "report.md").write_text(
        f"""# Base tenants' inter-token latency while long prompts arrive: PARA engine vs plain vLLM

{setup or served_setup(args)}

| system | ITL p50 ms | ITL p99 ms | ITL max ms | decode tok/s |
|---|---|---|---|---|
{rows}

| target | verdict | detail |
|---|---|---|
| PARA/plain base ITL p99 <= {ITL_P99_MAX_VS_PLAIN:.2f} (median of per-round ratios) | **{verdict}** | \
{ratio.fmt(3) if ratio else 'n/a'} |
| PARA/plain base ITL p50 (information) | | {p50.fmt(3) if p50 else 'n/a'} |
""")


if __name__ == "__main__":
    sys.exit(main())
