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
from vllm_para.serve_process import VLLMServer
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
    paths = ad.build_lora_adapters(base, work / system, system, n, r, targets, seed)
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


@dataclass(frozen=True)
class Plan:
    """What one run does, after the mode's defaults and the command-line overrides are merged."""

    mode: str
    model: ad.ModelSpec
    systems: tuple[str, ...]
    levels: tuple[int, ...]
    requests: int
    adapters: int
    prompt_words: int
    max_tokens: int
    distribution: str
    zipf_exponent: float
    beam_search: bool
    seed: int
    run_time_s: int
    startup_timeout_s: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Plan":
        m = MODES[args.mode]
        levels = tuple(int(c) for c in args.concurrency.split(",")) if args.concurrency else m.concurrency
        return cls(args.mode, m.model, tuple(args.systems), levels, args.requests or m.requests,
                   args.adapters or m.adapters, args.prompt_words or m.prompt_words, args.max_tokens or m.max_tokens,
                   args.distribution, args.zipf_exponent, args.beam_search, args.seed, args.run_time,
                   args.startup_timeout)

    def load(self, concurrency: int, models: tuple[str, ...]) -> LoadSpec:
        return LoadSpec(concurrency=concurrency, total_requests=self.requests, max_tokens=self.max_tokens,
                        prompt_words=self.prompt_words, models=models, distribution=self.distribution,
                        zipf_exponent=self.zipf_exponent, seed=self.seed, beam_search=self.beam_search,
                        run_time_s=self.run_time_s)

    def meta(self) -> dict:
        m = self.model
        traffic = self.distribution + (f" (s={self.zipf_exponent})" if self.distribution == "zipf" else "")
        traffic += f", {self.prompt_words}-word prompts, {self.max_tokens} output tokens (ignore_eos), "
        traffic += "beam search width 3 (not streamed)" if self.beam_search else "streamed, greedy"
        return {
            "mode": self.mode, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "base model": f"Llama-shaped, random weights: hidden {m.hidden_size}, intermediate "
                          f"{m.intermediate_size}, {m.num_hidden_layers} layers, {m.num_attention_heads} heads, "
                          f"{m.num_key_value_heads} KV heads, head_dim {m.head_dim}",
            "adapters per system": self.adapters, "traffic": traffic,
            "requests per concurrency level": self.requests, "concurrency levels": list(self.levels),
            "seed": self.seed,
            "engine flags (all systems)": f"`{' '.join(engine_flags(self.seed))}`, VLLM_CPU_KVCACHE_SPACE=1",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "systems": {},
        }


def main(argv=None) -> Path:
    args = parse_args(argv)
    plan = Plan.from_args(args)
    run_dir = args.out_dir / (args.run_id or f"{plan.mode}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    meta, rows = plan.meta(), []
    with tempfile.TemporaryDirectory(prefix="vllm_para_loadtest_") as tmp:
        work = args.work_dir or Path(tmp)
        _log(f"building the base model in {work}")
        base = ad.build_base(plan.model, work / "base")
        for system in plan.systems:
            rows += run_system(system, plan, base, work, run_dir, meta)
            write_all(rows, meta, run_dir)  # keep partial results if a later system fails
    _log(f"done: {run_dir / 'report.md'}")
    return run_dir


def run_system(system: str, plan: Plan, base: Path, work: Path, run_dir: Path, meta: dict) -> list[dict]:
    """Serve one system, warm it up, load it at each concurrency level, stop it."""
    _log(f"[{system}] building adapters")
    setup = setup_system(system, base, work, plan.adapters, plan.seed)
    rows = []
    _log(f"[{system}] starting vllm serve")
    with VLLMServer(base, engine_flags(plan.seed) + setup.flags, run_dir / "logs" / f"{system}_server.log",
                    startup_timeout=plan.startup_timeout_s) as srv:
        _log(f"[{system}] healthy after {srv.startup_s:.0f}s at {srv.url}; warming up")
        srv.warm_up(list(setup.models))
        for c in plan.levels:
            records = run_locust(srv.url, plan.load(c, setup.models), run_dir / "locust" / f"{system}_c{c}")
            row = {"system": system, "concurrency": c, **summarize(records, plan.max_tokens)}
            _log(f"[{system}] c={c}: {row['requests']} requests, {row['failures']} failed, "
                 f"{row['output_tokens_per_s']:.1f} output tok/s, TTFT p50 {_ms(row['ttft_p50'])}, "
                 f"ITL p50 {_ms(row['itl_p50'])}")
            rows.append(row)
    meta["systems"][system] = {"adapters": 0 if system == "base" else len(setup.models), "params": setup.params,
                               "flags": " ".join(_shorten(f, work) for f in setup.flags) or "(none)",
                               "startup_s": f"{srv.startup_s:.0f}"}
    return rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


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
