"""PARA vs vLLM multi-LoRA vs the base model under the same mixed-tenant load, ABBA protocol.

    python -m bench.compare --mode small                 # minutes, CPU is fine
    python -m bench.compare --mode full --dtype bfloat16 # the real comparison (hours on 2 cores)
    python -m bench.compare --mode small --systems base,para --concurrency 1,2 --requests 4 --rounds 3

Systems run one at a time (never two servers up at once) in ABBA order: round r runs
them forward when r is even and reversed when r is odd (`base para | para base | ...`),
for --rounds measured rounds (>= 3 for a valid run; see bench/protocol.py). Each
server is warmed up (one request per model, then a short unmeasured load at every
level) before its first measured slot. With --reuse adjacent (small mode's default)
the two adjacent slots of the same system at a round boundary share one server. Each measured
slot runs Locust headless for a fixed number of requests at each concurrency level.
Results land in `bench/results/<run-id>/`: rounds.csv (every measurement, warm-up
flagged), summary.csv (per-system medians and min-max), ratios.csv (per-round ratios,
their median and min-max), servers.csv (when each server was up), report.md with
pass/fail targets, PNG plots, Locust CSVs and server logs.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import adapters as ad
from . import protocol as P
from .life import LoadFor, PhaseHooks, Server, log, run_life
from .locust_runner import LoadSpec
from .report import write_plots, write_ratios, write_report, write_rounds, write_summary
from .systems import BASE_NAME, DTYPES, FLEET_SYSTEMS, MODES, SCENARIOS, SYSTEMS, engine_flags, phase_seed, spec_of
from .traffic import DISTRIBUTIONS

@dataclass
class SystemSetup:
    flags: list[str]
    models: tuple[str, ...]  # the `model` names requests spread over
    params: str  # trainable parameters per adapter, for the report


def setup_system(system: str, base: Path, work: Path, n: int, seed: int) -> SystemSetup:
    """Build the adapters `system` serves and the `vllm serve` flags that load them."""
    spec, _ = spec_of(base)
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=SCENARIOS, default="mixed",
                   help="mixed: N start-up adapters per system (default); fleet: --fleet-adapters adapters loaded "
                        "on first use from a directory, PARA vs LoRA (bench/fleet.py)")
    p.add_argument("--mode", choices=sorted(MODES), default=None,
                   help="model size and defaults (default: small; full for --scenario fleet)")
    p.add_argument("--model", default="random", choices=("random", "smollm2-135m"),
                   help="random: the mode's random-weight Llama shape; smollm2-135m: the real base "
                        "(`vllm-para base`, 30 layers, hidden 576)")
    p.add_argument("--systems", default=None,
                   help=f"comma-separated, from {','.join(SYSTEMS)} (fleet: {','.join(FLEET_SYSTEMS)}); default all")
    p.add_argument("--fleet-adapters", type=int, default=1000, help="fleet: adapters per system (default 1000)")
    p.add_argument("--adapter-kind", default="para", choices=("para", "ia3"),
                   help="fleet: the plugin's adapters are PARA (default) or PEFT (IA)^3 directories")
    p.add_argument("--fleet-host-cache", type=int, default=64,
                   help="fleet: --max-cpu-para-adapters / --max-cpu-loras (default 64)")
    p.add_argument("--fleet-device-slots", type=int, default=8,
                   help="fleet: --max-para-adapters / --max-loras (default 8)")
    p.add_argument("--concurrency", default=None, help="comma-separated levels (default: the mode's)")
    p.add_argument("--requests", type=int, default=None, help="requests per concurrency level")
    p.add_argument("--requests-per-user", type=int, default=None,
                   help="at least this many requests per simulated user at each level: level c sends "
                        "max(--requests, N * c), so high-concurrency phases last as long as low ones "
                        "(a 48-request phase at c=16 lasts about 4 s, shorter than this VM's drift)")
    p.add_argument("--adapters", type=int, default=None, help="adapters per system (default: the mode's)")
    p.add_argument("--prompt-words", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None, help="fixed output length")
    p.add_argument("--distribution", choices=DISTRIBUTIONS, default="uniform")
    p.add_argument("--zipf-exponent", type=float, default=None, help="Zipf s (default 1.0; fleet 1.1)")
    p.add_argument("--beam-search", action="store_true", help="beam search (width 3, not streamed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="--dtype of every server")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"measured ABBA rounds (default: the mode's; >= {P.MIN_ROUNDS} for a valid run)")
    p.add_argument("--warmup-rounds", type=int, default=0, help="whole unmeasured rounds before round 0")
    p.add_argument("--warmup-requests", type=int, default=None,
                   help="requests of the unmeasured load at each level when a server starts "
                        "(default: max(2, concurrency); 0: only one request per model)")
    p.add_argument("--reuse", choices=("adjacent", "never"), default=None,
                   help="adjacent: the two adjacent slots of one system at a round boundary share a server "
                        "(balanced for an odd number of rounds); never: a fresh server for every slot "
                        "(default: small adjacent, full never)")
    p.add_argument("--label", default=None, help="a line quoted at the top of report.md (e.g. 'protocol smoke run')")
    p.add_argument("--notes", type=Path, default=None, help="a markdown file appended to report.md (analysis)")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).with_name("results"))
    p.add_argument("--run-id", default=None, help="results sub-folder (default: <mode>-<timestamp>)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where the base model and adapters are built (default: a temporary folder)")
    p.add_argument("--run-time", type=int, default=900, help="safety limit (s) of each Locust run")
    p.add_argument("--startup-timeout", type=int, default=900, help="seconds to wait for a server's /health")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for every server (repeatable; recorded in the report), e.g. "
                        "THP_MEM_ALLOC_ENABLE=1: PyTorch puts allocations >= 2 MiB (weights, KV cache) on "
                        "transparent huge pages")
    p.add_argument("--enforce-eager", action="store_true",
                   help="every server without torch.compile (faster start-up; for protocol checks, not speed claims)")
    args = p.parse_args(argv)
    fleet = args.scenario == "fleet"
    valid = FLEET_SYSTEMS if fleet else SYSTEMS
    args.mode = args.mode or ("full" if fleet else "small")
    args.systems = [s for s in (args.systems or ",".join(valid)).split(",") if s]
    for item in args.server_env:
        name, sep, _ = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            p.error(f"--server-env {item!r}: expected NAME=VALUE, e.g. THP_MEM_ALLOC_ENABLE=1")
    unknown = set(args.systems) - set(valid)
    if unknown or not args.systems:
        p.error(f"--systems: unknown {sorted(unknown)}; choose from {','.join(valid)}")
    if fleet and args.server_env:
        p.error("--server-env is not supported with --scenario fleet (its systems set their own environment)")
    if fleet and args.fleet_adapters < 1:
        p.error("--fleet-adapters must be >= 1")
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
    dtype: str = "float32"
    rounds: int = 3
    warmup_rounds: int = 0
    warmup_requests: int | None = None
    reuse: bool = True
    enforce_eager: bool = False
    requests_per_user: int | None = None
    server_env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Plan":
        m = MODES[args.mode]
        levels = tuple(int(c) for c in args.concurrency.split(",")) if args.concurrency else m.concurrency
        model = ad.real_spec(args.model) if getattr(args, "model", None) not in (None, "random") else m.model
        return cls(args.mode, model, tuple(args.systems), levels, args.requests or m.requests,
                   args.adapters or m.adapters, args.prompt_words or m.prompt_words, args.max_tokens or m.max_tokens,
                   args.distribution, 1.0 if args.zipf_exponent is None else args.zipf_exponent, args.beam_search,
                   args.seed, args.run_time,
                   args.startup_timeout, args.dtype, args.rounds or m.rounds, args.warmup_rounds,
                   args.warmup_requests, m.reuse if args.reuse is None else args.reuse == "adjacent",
                   getattr(args, "enforce_eager", False), getattr(args, "requests_per_user", None),
                   tuple(tuple(item.split("=", 1)) for item in getattr(args, "server_env", ())))

    def env_string(self) -> str:
        """Every server's environment beyond the inherited one, as the report states it."""
        return ", ".join(["VLLM_CPU_KVCACHE_SPACE=1", *(f"{k}={v}" for k, v in self.server_env)])

    def requests_at(self, concurrency: int) -> int:
        """Measured requests of one phase at `concurrency`."""
        return max(self.requests, (self.requests_per_user or 0) * concurrency)

    def load(self, concurrency: int, models: tuple[str, ...], round_: int, warmup: bool = False,
             requests: int | None = None) -> LoadSpec:
        """The phase (round, level) sends the same seeded requests on every system; different phases
        send different prompts, so no phase is served from another phase's prefix cache."""
        return LoadSpec(concurrency=concurrency, total_requests=requests or self.requests_at(concurrency),
                        max_tokens=self.max_tokens, prompt_words=self.prompt_words, models=models,
                        distribution=self.distribution, zipf_exponent=self.zipf_exponent,
                        seed=phase_seed(self.seed, round_, self.levels.index(concurrency), warmup),
                        beam_search=self.beam_search, run_time_s=self.run_time_s)

    def meta(self, slots: list[P.Slot]) -> dict:
        m = self.model
        traffic = self.distribution + (f" (s={self.zipf_exponent})" if self.distribution == "zipf" else "")
        traffic += f", {self.prompt_words}-word prompts, {self.max_tokens} output tokens (ignore_eos), "
        traffic += "beam search width 3 (not streamed)" if self.beam_search else "streamed, greedy"
        return {
            "mode": self.mode, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "base model": m.describe(),
            "adapters per system": self.adapters, "traffic": traffic,
            "requests per concurrency level": (", ".join(f"c={c}: {self.requests_at(c)}" for c in self.levels)
                                               if self.requests_per_user else self.requests),
            "concurrency levels": list(self.levels),
            "seed": self.seed,
            "engine flags (all systems)": f"`{' '.join(engine_flags(self.seed, self.dtype, self.enforce_eager))}`, "
                                          + self.env_string(),
            "protocol": f"ABBA, {self.rounds} measured round(s)"
                        + (f" after {self.warmup_rounds} warm-up round(s)" if self.warmup_rounds else "")
                        + ", one server at a time; every fresh server gets one request per model and "
                        + (f"{self.warmup_requests}" if self.warmup_requests is not None else "max(2, c)")
                        + " unmeasured requests at each level c before its first measured slot; "
                        + ("adjacent slots of one system share a server (`*`)" if self.reuse
                           else "a fresh server for every slot"),
            "order": f"`{P.order_string(slots)}` ({len(P.lives(slots))} server starts)",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "systems": {},
        }


def main(argv=None) -> Path:
    args = parse_args(argv)
    if args.scenario == "fleet":
        from .fleet import run_fleet

        return run_fleet(args)
    plan = Plan.from_args(args)
    run_dir = args.out_dir / (args.run_id or f"{plan.mode}-{plan.dtype}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    notes = args.notes.read_text() if args.notes else None
    slots = P.schedule(plan.systems, plan.rounds, plan.warmup_rounds, reuse=plan.reuse)
    meta = plan.meta(slots)
    if args.label:
        meta["banner"] = args.label
    log(f"ABBA schedule ({len(P.lives(slots))} server starts): {P.order_string(slots)}")
    measurements: list[P.Measurement] = []
    timeline: list[dict] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vllm_para_loadtest_") as tmp:
        work = args.work_dir or Path(tmp)
        log(f"building the base model in {work}")
        base = ad.build_base(plan.model, work / "base")
        setups = {}
        for system in plan.systems:  # every adapter is built before any server starts
            log(f"[{system}] building adapters")
            setups[system] = setup_system(system, base, work, plan.adapters, plan.seed)
            meta["systems"][system] = {
                "adapters": 0 if system == "base" else len(setups[system].models), "params": setups[system].params,
                "flags": " ".join(_shorten(f, work) for f in setups[system].flags) or "(none)", "startup_s": "-"}
        for i, life in enumerate(P.lives(slots)):
            measurements += run_system_life(i, life, plan, base, setups[life[0].system], run_dir, timeline, t0)
            _startup_medians(meta, timeline)
            write_all(measurements, meta, run_dir, timeline, notes)  # keep partial results if a later slot fails
    log(f"done: {run_dir / 'report.md'}")
    return run_dir


def life_of(plan: Plan, setup: SystemSetup, system: str) -> tuple[Server, LoadFor]:
    """The server a system's life starts, and the load of each of its phases."""
    server = Server(system, engine_flags(plan.seed, plan.dtype, plan.enforce_eager) + setup.flags,
                    dict(plan.server_env), warm_models=setup.models)

    def load(c: int, round_: int, warmup: bool, requests: int | None) -> LoadSpec:
        return plan.load(c, setup.models, round_, warmup=warmup, requests=requests)

    return server, load


def run_system_life(index: int, life: list[P.Slot], plan: Plan, base: Path, setup: SystemSetup, run_dir: Path,
                    timeline: list[dict], t0: float, hooks: PhaseHooks | None = None) -> list[P.Measurement]:
    server, load = life_of(plan, setup, life[0].system)
    return run_life(index, life, server, base, plan, load, run_dir, timeline, t0, hooks)


def _startup_medians(meta: dict, timeline: list[dict]) -> None:
    for system, info in meta["systems"].items():
        starts = [e["startup_s"] for e in timeline if e["system"] == system and "startup_s" in e]
        if starts:
            s = P.spread(starts)
            info["startup_s"] = f"{s.median:.0f}" + (f" ({len(starts)} starts, {s.lo:.0f}-{s.hi:.0f})"
                                                     if len(starts) > 1 else "")


def _shorten(flag: str, work: Path) -> str:
    return flag.split("=", 1)[0] + "=..." if "=" in flag and str(work) in flag else flag


TIMELINE_FIELDS = ["life", "system", "slots", "rounds", "start_s", "healthy_s", "startup_s", "stop_s"]


def write_all(ms: list[P.Measurement], meta: dict, run_dir: Path, timeline: list[dict],
              notes: str | None = None) -> None:
    write_rounds(ms, run_dir / "rounds.csv")
    write_summary(ms, run_dir / "summary.csv")
    write_ratios(ms, run_dir / "ratios.csv")
    with open(run_dir / "servers.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TIMELINE_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(timeline)
    write_plots(ms, run_dir)
    write_report(ms, meta, run_dir / "report.md", notes)


if __name__ == "__main__":
    main()
