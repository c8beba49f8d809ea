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
import re
import tempfile
import time
from pathlib import Path

from . import adapters as ad
from . import protocol as P
from .life import LoadFor, PhaseHooks, Server, log, run_life
from .locust_runner import LoadSpec
from .report import write_plots, write_ratios, write_report, write_rounds, write_summary
from .systems import (  # noqa: F401  (re-exported: the mixed scenario's plan and systems)
    BASE_NAME, DTYPES, FLEET_SYSTEMS, MODES, SCENARIOS, SYSTEMS, Plan, SystemSetup, engine_flags, phase_seed,
    setup_system, spec_of,
)
from .traffic import DISTRIBUTIONS

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
