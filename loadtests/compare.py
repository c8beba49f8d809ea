"""PARA vs vLLM multi-LoRA vs the base model under the same mixed-tenant load.

    python -m loadtests.compare --mode small                 # minutes, CPU is fine
    python -m loadtests.compare --mode full                  # the real comparison
    python -m loadtests.compare --mode small --systems base,para --concurrency 1,2 --requests 4

For each system in turn it starts `vllm serve` on 127.0.0.1 with the same base model
and engine settings, warms it up, runs Locust headless for a fixed number of
requests at each concurrency level, stops the server and moves on. Results land in
`loadtests/results/<run-id>/`: Locust CSVs and logs, summary.csv, report.md and PNG plots.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import adapters as ad
from .locust_runner import LoadSpec, run_locust, summarize
from .report import write_plots, write_report, write_summary
from .server import VLLMServer
from .traffic import DISTRIBUTIONS

SYSTEMS = ("base", "para", "lora-matched", "lora16")
BASE_NAME = "base"  # --served-model-name of the base model on every server


@dataclass(frozen=True)
class Mode:
    model: ad.ModelSpec
    adapters: int
    concurrency: tuple[int, ...]
    requests: int
    prompt_words: int
    max_tokens: int


MODES = {
    "small": Mode(ad.ModelSpec(128, 256, 2, 2, 1), adapters=4, concurrency=(1, 4), requests=8,
                  prompt_words=16, max_tokens=16),
    "full": Mode(ad.ModelSpec(1024, 2816, 4, 16, 4), adapters=8, concurrency=(1, 4, 16), requests=48,
                 prompt_words=64, max_tokens=64),
}


def engine_flags(seed: int) -> list[str]:
    """Engine settings shared by every system, so only the adapter method differs."""
    return ["--served-model-name", BASE_NAME, "--dtype", "float32", "--max-model-len", "512",
            "--max-num-seqs", "32", "--seed", str(seed)]


@dataclass
class SystemSetup:
    flags: list[str]
    models: tuple[str, ...]  # the `model` names requests spread over
    params: str  # trainable parameters per adapter, for the report


def setup_system(system: str, base: Path, work: Path, n: int, seed: int) -> SystemSetup:
    """Build the adapters `system` serves and the `vllm serve` flags that load them."""
    spec = _spec_of(base)
    para_params = ad.para_param_count(base)
    if system == "base":
        return SystemSetup([], (BASE_NAME,), "0")
    if system == "para":
        paths = ad.build_para_adapters(base, work / "para", n, seed)
        flags = ["--enable-para", "--para-modules", *_modules(paths), "--max-para-adapters", str(n)]
        return SystemSetup(flags, tuple(paths), f"{para_params} (r={ad.PARA_R}, targets {','.join(ad.PARA_TARGETS)})")
    if system == "lora-matched":
        r, targets = ad.matched_lora_rank(spec, para_params), ad.MATCHED_LORA_TARGETS
    elif system == "lora16":
        r, targets = 16, ad.ALL_LINEAR
    else:
        raise ValueError(f"unknown system {system!r}; expected some of {SYSTEMS}")
    prefix = system.replace("-", "_")
    paths = ad.build_lora_adapters(base, work / system, prefix, n, r, targets, seed)
    flags = ["--enable-lora", "--lora-modules", *_modules(paths), "--max-loras", str(n),
             "--max-lora-rank", str(ad.max_lora_rank_flag(r))]
    params = f"{ad.lora_param_count(spec, r, targets)} (r={r}, targets {','.join(targets)})"
    return SystemSetup(flags, tuple(paths), params)


def _modules(paths: dict[str, str]) -> list[str]:
    return [f"{name}={path}" for name, path in paths.items()]


def _spec_of(base: Path) -> ad.ModelSpec:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(str(base))
    return ad.ModelSpec(c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
                        c.num_key_value_heads, c.head_dim)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=sorted(MODES), default="small")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {','.join(SYSTEMS)}")
    p.add_argument("--concurrency", default=None, help="comma-separated levels (default: the mode's)")
    p.add_argument("--requests", type=int, default=None, help="requests per concurrency level")
    p.add_argument("--adapters", type=int, default=None, help="adapters per system (default: the mode's)")
    p.add_argument("--prompt-words", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None, help="fixed output length")
    p.add_argument("--distribution", choices=DISTRIBUTIONS, default="uniform")
    p.add_argument("--zipf-exponent", type=float, default=1.0)
    p.add_argument("--beam-search", action="store_true", help="beam search (width 3, not streamed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path(__file__).with_name("results"))
    p.add_argument("--run-id", default=None, help="results sub-folder (default: <mode>-<timestamp>)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where the base model and adapters are built (default: a temporary folder)")
    p.add_argument("--run-time", type=int, default=900, help="safety limit (s) of each Locust run")
    p.add_argument("--startup-timeout", type=int, default=900, help="seconds to wait for a server's /health")
    args = p.parse_args(argv)
    args.systems = [s for s in args.systems.split(",") if s]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown or not args.systems:
        p.error(f"--systems: unknown {sorted(unknown)}; choose from {','.join(SYSTEMS)}")
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    mode = MODES[args.mode]
    levels = [int(c) for c in args.concurrency.split(",")] if args.concurrency else list(mode.concurrency)
    n_requests = args.requests or mode.requests
    n_adapters = args.adapters or mode.adapters
    prompt_words, max_tokens = args.prompt_words or mode.prompt_words, args.max_tokens or mode.max_tokens
    run_dir = args.out_dir / (args.run_id or f"{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vllm_para_loadtest_") as tmp:
        work = args.work_dir or Path(tmp)
        _log(f"building the base model in {work}")
        base = ad.build_base(mode.model, work / "base")
        meta = {
            "mode": args.mode, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "base model": f"Llama-shaped, random weights, {mode.model}",
            "adapters per system": n_adapters,
            "traffic": f"{args.distribution}" + (f" (s={args.zipf_exponent})" if args.distribution == "zipf" else "")
                       + f", {prompt_words}-word prompts, {max_tokens} output tokens (ignore_eos)"
                       + (", beam search width 3" if args.beam_search else ", streamed, greedy"),
            "requests per concurrency level": n_requests, "concurrency levels": levels, "seed": args.seed,
            "engine flags (all systems)": f"`{' '.join(engine_flags(args.seed))}`, VLLM_CPU_KVCACHE_SPACE=1",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "systems": {},
        }
        rows: list[dict] = []
        for system in args.systems:
            rows += run_system(system, base, work, run_dir, args, meta, levels, n_requests, n_adapters,
                               prompt_words, max_tokens)
            write_all(rows, meta, run_dir)  # keep partial results if a later system fails
    _log(f"done: {run_dir / 'report.md'}")
    return run_dir


def run_system(system, base, work, run_dir, args, meta, levels, n_requests, n_adapters, prompt_words,
               max_tokens) -> list[dict]:
    _log(f"[{system}] building adapters")
    setup = setup_system(system, base, work, n_adapters, args.seed)
    flags = engine_flags(args.seed) + setup.flags
    rows = []
    _log(f"[{system}] starting vllm serve")
    with VLLMServer(base, flags, run_dir / "logs" / f"{system}_server.log",
                    startup_timeout=args.startup_timeout) as srv:
        _log(f"[{system}] healthy after {srv.startup_s:.0f}s at {srv.url}; warming up")
        srv.warm_up(list(setup.models))
        for c in levels:
            spec = LoadSpec(concurrency=c, total_requests=n_requests, max_tokens=max_tokens,
                            prompt_words=prompt_words, models=setup.models, distribution=args.distribution,
                            zipf_exponent=args.zipf_exponent, seed=args.seed, beam_search=args.beam_search,
                            run_time_s=args.run_time)
            records = run_locust(srv.url, spec, run_dir / "locust" / f"{system}_c{c}")
            row = {"system": system, "concurrency": c, **summarize(records, max_tokens)}
            _log(f"[{system}] c={c}: {row['requests']} requests, {row['failures']} failed, "
                 f"{row['output_tokens_per_s']:.1f} tok/s, TTFT p50 {row['ttft_p50']} ms")
            rows.append(row)
    meta["systems"][system] = {"adapters": len(setup.models) if system != "base" else 0, "params": setup.params,
                               "flags": " ".join(_shorten(f, work) for f in setup.flags) or "(none)",
                               "startup_s": f"{srv.startup_s:.0f}"}
    return rows


def _shorten(flag: str, work: Path) -> str:
    return flag.split("=", 1)[0] + "=..." if "=" in flag and str(work) in flag else flag


def write_all(rows: list[dict], meta: dict, run_dir: Path) -> None:
    write_summary(rows, run_dir / "summary.csv")
    write_plots(rows, run_dir)
    write_report(rows, meta, run_dir / "report.md")


def _log(msg: str) -> None:
    print(f"[loadtest {time.strftime('%H:%M:%S')}] {msg}", flush=True)


if __name__ == "__main__":
    main()
