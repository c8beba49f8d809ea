"""Where the CPU goes while a server is under load: a whole-machine `perf` profile of one load
phase, base vs PARA, ABBA over fresh servers, split by process and by code.

    .venv/bin/python -m bench.served_profile --dtype float32 --concurrency 1,4 --rounds 2

Each server runs the load test's sequence (`bench.compare`: same model, adapters, warm-up,
seeded prompts) at every level of `--concurrency`; the LAST level's phase is recorded with
`perf record -a` (every CPU, every process, no call graphs). The samples are then attributed:

- by process: the model worker (`VLLM::Worker`), vLLM's engine core (`VLLM::EngineCore`, which
  busy-polls), the API server (`vllm`), the load generator (`locust`), idle (`swapper`), other;
- by code, within the worker: oneDNN's JIT GEMM kernels (`[JIT]` code, no file behind it),
  vLLM's CPU kernels (`_C.abi3.so`: attention, oneDNN wrappers), Inductor's compiled kernels
  (`*.main.so`), the Python interpreter (`libpython`: vLLM's and PARA's host code), PyTorch's
  runtime (`libtorch*`, `libc10`: dispatcher, eager ops), the kernel, and the rest.

Every count is CPU milliseconds per 1,000 generated tokens of the phase (samples / frequency),
so servers that ran at different speeds compare on the same work. Python 3.11 gives perf no
Python function names: host code shows as interpreter time, which is still the figure that
says whether PARA's per-step host work (step plan, VG-op calls) costs more than base's.

Needs `perf` and permission to record every CPU: root, CAP_PERFMON, or
`kernel.perf_event_paranoid` <= 0 (a user with a higher setting gets an error from perf). Writes
`profile.csv` (one row per server, process, code) and `report.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import re
import shutil
import signal
import statistics
import subprocess
import time
from collections import defaultdict
from pathlib import Path

from . import adapters as ad
from . import compare as C
from . import protocol as P
from .life import PhaseHooks, log
from .report import report_head
from .systems import MODES, engine_flags

PROCESSES = (("VLLM::Worker", "worker"), ("VLLM::EngineCor", "engine core"), ("vllm", "API server"),
             ("locust", "load generator"), ("swapper", "idle"))
CODE = ("oneDNN JIT GEMM", "vLLM CPU kernels", "Inductor kernels", "Python interpreter", "PyTorch runtime",
        "OS kernel", "other")


def process_of(comm: str) -> str:
    """A sample's process group from perf's `comm` (vLLM renames its processes; perf keeps 15 chars)."""
    for prefix, name in PROCESSES:
        if comm == prefix or (prefix.startswith("VLLM::") and comm.startswith(prefix)):
            return name
    return "other"


def code_of(dso: str) -> str:
    """What kind of code a sample ran, from perf's shared-object column."""
    if dso.startswith("[JIT]"):
        return "oneDNN JIT GEMM"
    if dso.startswith("_C.") or dso.startswith("_C_"):
        return "vLLM CPU kernels"
    if dso.endswith(".main.so"):
        return "Inductor kernels"
    if dso.startswith("libpython"):
        return "Python interpreter"
    if dso.startswith(("libtorch", "libc10")):
        return "PyTorch runtime"
    if dso.startswith("[kernel"):
        return "OS kernel"
    return "other"


_ROW = re.compile(r"^\s*[\d.]+%\s+(\d+)\s+(\S+(?: \S+)*?)\s{2,}(\S.*?)\s*$")


def parse_report(text: str) -> dict[tuple[str, str], int]:
    """{(process, code): samples} from `perf report --stdio -n --sort comm,dso` output."""
    out: dict[tuple[str, str], int] = defaultdict(int)
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _ROW.match(line)
        if not m:
            continue
        samples, comm, dso = int(m.group(1)), m.group(2), m.group(3)
        out[(process_of(comm), code_of(dso))] += samples
    return dict(out)


def per_k_tokens(samples: dict[tuple[str, str], int], frequency: int, tokens: float) -> dict[tuple[str, str], float]:
    """CPU milliseconds per 1,000 generated tokens."""
    return {key: 1000.0 * n / frequency / tokens * 1000.0 for key, n in samples.items()}


def summarize_servers(rows: list[dict]) -> dict[str, dict[tuple[str, str], float]]:
    """{system: {(process, code): median ms per 1k tokens over its servers}}; every key counts,
    a server without samples for a key contributes 0."""
    per_server: dict[str, dict[int, dict[tuple[str, str], float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        per_server[r["system"]][r["server"]][(r["process"], r["code"])] = r["ms_per_1k_tokens"]
    out = {}
    for system, servers in per_server.items():
        keys = {key for table in servers.values() for key in table}
        out[system] = {key: statistics.median(t.get(key, 0.0) for t in servers.values()) for key in keys}
    return out


def throughputs(rows: list[dict]) -> dict[str, list[float]]:
    """{system: profiled-phase output tok/s of each of its servers, in run order}."""
    first = {}
    for r in rows:
        first.setdefault(r["server"], (r["system"], r["tok_s"]))
    out: dict[str, list[float]] = defaultdict(list)
    for server in sorted(first):
        system, tok_s = first[server]
        out[system].append(tok_s)
    return dict(out)


def process_totals(table: dict[tuple[str, str], float]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for (process, _), v in table.items():
        totals[process] += v
    return dict(totals)


def markdown(meta: dict, rows: list[dict]) -> str:
    med, tok_s = summarize_servers(rows), throughputs(rows)
    systems = list(med)
    lines = report_head("Where the CPU goes under load: perf, base vs PARA", meta.get("label"))
    lines += [f"- {k}: {v}" for k, v in meta.items() if k != "label"]
    lines += ["", "CPU milliseconds per 1,000 generated tokens of the profiled phase, median over each "
              "system's servers (a server's own value is samples / frequency / tokens). Output tok/s of "
              "the profiled phase per server: "
              + "; ".join(f"{s}: " + ", ".join(f"{v:.1f}" for v in tok_s[s]) for s in systems) + ".", ""]
    pair = "para" in med and "base" in med
    head = "| process | " + " | ".join(systems) + (" | PARA - base | PARA/base |" if pair else " |")
    lines += ["### By process", "", head, "|---" * (len(systems) + 1 + 2 * pair) + "|"]
    def row(label: str, table: dict[str, dict], key, digits: int) -> str:
        vals = {s: table[s].get(key, 0.0) for s in systems}
        out = f"| {label} | " + " | ".join(f"{v:.{digits}f}" for v in vals.values())
        if pair:
            b, p = vals["base"], vals["para"]
            out += f" | {p - b:+.{digits}f} | " + (f"{p / b:.3f}" if b else "-")
        return out + " |"

    totals = {s: process_totals(med[s]) for s in systems}
    lines += [row(process, totals, process, 0) for _, process in (*PROCESSES, ("", "other"))]
    lines += ["", "### The worker, by code", "", head.replace("process", "code"),
              "|---" * (len(systems) + 1 + 2 * pair) + "|"]
    lines += [row(code, med, ("worker", code), 1) for code in CODE]
    lines += ["", "### Per server (worker, ms per 1,000 tokens)", "",
              "| server | system | tok/s | " + " | ".join(CODE) + " | worker total |",
              "|---" * (len(CODE) + 4) + "|"]
    for server in sorted({r["server"] for r in rows}):
        mine = [r for r in rows if r["server"] == server and r["process"] == "worker"]
        by = defaultdict(float)
        for r in mine:
            by[r["code"]] += r["ms_per_1k_tokens"]
        first = next(r for r in rows if r["server"] == server)
        lines.append(f"| {server} | {first['system']} | {first['tok_s']:.1f} | "
                     + " | ".join(f"{by[c]:.1f}" for c in CODE) + f" | {sum(by.values()):.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.served_profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=sorted(MODES), default="full")
    p.add_argument("--systems", default="base,para")
    p.add_argument("--dtype", choices=C.DTYPES, default="float32")
    p.add_argument("--concurrency", default="1,4", help="levels run in order on each server; the last is profiled")
    p.add_argument("--requests-per-user", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="ABBA rounds (a fresh server per slot)")
    p.add_argument("--frequency", type=int, default=997, help="perf samples per second per CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).with_name("results"))
    p.add_argument("--run-id", default=None)
    p.add_argument("--work-dir", type=Path, default=None, help="where the model and adapters are built")
    p.add_argument("--label", default=None, help="a line quoted at the top of report.md")
    return p.parse_args(argv)


@contextlib.contextmanager
def perf_recording(data: Path, frequency: int):
    """`perf record -a` into `data` while the block runs (every CPU, every process)."""
    perf = subprocess.Popen(["perf", "record", "-a", "-F", str(frequency), "-o", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # perf is recording before the first request
    try:
        yield
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait()
    if not data.exists():
        raise SystemExit(f"perf record wrote no {data.name} (exit {perf.returncode}): recording every "
                         "CPU needs root, CAP_PERFMON or kernel.perf_event_paranoid <= 0")


def attribute(data: Path, frequency: int, tokens: float) -> dict[tuple[str, str], float]:
    """CPU ms per 1,000 tokens by (process, code) from a recording, which is then deleted
    (hundreds of MB; the attribution is what is kept)."""
    text = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-n", "--sort", "comm,dso"],
                          capture_output=True, text=True, check=True).stdout
    data.unlink()
    return per_k_tokens(parse_report(text), frequency, tokens)


def main(argv=None) -> Path:
    args = parse_args(argv)
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed: this profile needs `perf record -a` (linux-perf / linux-tools)")
    compare_argv = ["--mode", args.mode, "--systems", args.systems, "--dtype", args.dtype, "--concurrency",
                    args.concurrency, "--requests-per-user", str(args.requests_per_user), "--seed", str(args.seed),
                    "--rounds", str(args.rounds), "--reuse", "never"]
    for item in args.server_env:
        compare_argv += ["--server-env", item]
    plan = C.Plan.from_args(C.parse_args(compare_argv))
    run_dir = args.out_dir / (args.run_id or f"served-profile-{args.dtype}-{time.strftime('%Y%m%d-%H%M%S')}")
    (run_dir / "perf").mkdir(parents=True, exist_ok=True)
    slots = P.schedule(plan.systems, plan.rounds, reuse=False)
    profiled, recordings = plan.levels[-1], {}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "dtype": args.dtype, "model": f"{args.mode} mode",
            "levels (in order on every server)": list(plan.levels), "profiled level": profiled,
            "requests at the profiled level": plan.requests_at(profiled),
            "engine flags (all systems)": f"`{' '.join(engine_flags(plan.seed, plan.dtype))}`, " + plan.env_string(),
            "order": f"`{P.order_string(slots)}` (a fresh server per slot)",
            "perf": f"`perf record -a -F {args.frequency}` over the profiled phase", "label": args.label}
    rows: list[dict] = []
    work = args.work_dir or run_dir / "work"
    base = ad.build_base(plan.model, work / "base")
    setups = {s: C.setup_system(s, base, work, plan.adapters, plan.seed) for s in plan.systems}

    class PerfAtProfiledLevel(PhaseHooks):
        def around(self, slot: P.Slot, c: int):
            if c != profiled:
                return contextlib.nullcontext()
            recordings[slot.index] = data = run_dir / "perf" / f"{slot.index}_{slot.system}_c{c}.data"
            return perf_recording(data, args.frequency)

    timeline: list[dict] = []
    t0 = time.monotonic()
    for i, life in enumerate(P.lives(slots)):  # the load test's own server lives, one slot each
        for m in C.run_system_life(i, life, plan, base, setups[life[0].system], run_dir, timeline, t0,
                                   PerfAtProfiledLevel()):
            if m.warmup or m.level != profiled:
                continue
            s = m.metrics
            ms = attribute(recordings[m.slot], args.frequency, s["output_tokens_per_s"] * s["wall_s"])
            rows += [{"server": m.slot, "system": m.system, "tok_s": s["output_tokens_per_s"],
                      "process": process, "code": code, "ms_per_1k_tokens": v}
                     for (process, code), v in ms.items()]
    with open(run_dir / "profile.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["server", "system", "tok_s", "process", "code", "ms_per_1k_tokens"])
        w.writeheader()
        w.writerows(rows)
    (run_dir / "report.md").write_text(markdown(meta, rows))
    log(f"done: {run_dir / 'report.md'}")
    return run_dir


if __name__ == "__main__":
    main()
