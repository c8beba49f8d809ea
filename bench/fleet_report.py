"""The fleet scenario's output: rounds / summary / memory CSVs, report.md and fleet.png.

Runs in: the benchmark driver (`python -m bench.compare --scenario fleet`).
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

from . import protocol as P
from .fleet_plan import BUDGET_BYTES, FleetPlan, FleetSystem
from .protocol import percentile
from .systems import engine_flags

ROUND_FIELDS = ["slot", "round", "warmup", "system", "concurrency", "requests", "failures", "output_tokens_per_s",
                "ttft_p50", "ttft_p99", "cold_requests", "ttft_cold_p50", "ttft_cold_p99", "warm_requests",
                "ttft_warm_p50", "ttft_warm_p99", "tpot_p50", "distinct_adapters", "adapters_in_host_memory",
                "adapter_host_bytes", "adapter_device_bytes", "cache_misses", "mean_load_s", "wall_s"]
SUMMARY_FIELDS = ["system", "concurrency", "rounds", "requests", "failures", "output_tokens_per_s_median",
                  "output_tokens_per_s_min", "output_tokens_per_s_max", "ttft_p50_median", "ttft_p99_median",
                  "cold_requests", "ttft_cold_p50", "ttft_cold_p99", "warm_requests", "ttft_warm_p50",
                  "ttft_warm_p99", "tpot_p50_median", "distinct_adapters_median", "adapters_in_host_memory_max",
                  "para_over_lora_tok_s_median", "para_over_lora_tok_s_min", "para_over_lora_tok_s_max"]
MEMORY_FIELDS = ["system", "adapter", "trainable_params", "host_bytes_per_adapter", "adapters_in_host_memory_max",
                 "adapter_host_bytes_max", "device_slots", "device_bytes_per_slot", "adapter_device_bytes",
                 "adapters_in_2gib_host", "adapter_slots_in_2gib_device", "source"]


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def summary_rows(ms: list[P.Measurement], cold_warm: dict) -> list[dict]:
    tput = P.per_system(ms, "output_tokens_per_s")
    ratio = P.ratio_spreads(ms, "para", "lora", "output_tokens_per_s")
    rows = []
    for system in P.systems_of(ms):
        for level in P.levels(ms):
            mine = [m for m in P.measured(ms) if m.system == system and m.level == level]
            if not mine:
                continue
            # `mine` bound now (the lambda is only called within this iteration)
            med = lambda k, mine=mine: (  # noqa: E731
                s.median if (s := P.spread(m.metrics.get(k) for m in mine)) else None)
            pool = cold_warm.get((system, level), {"cold": [], "warm": []})
            t, r = tput.get((system, level)), ratio.get(level) if system == "para" else None
            rows.append({
                "system": system, "concurrency": level, "rounds": len(mine),
                "requests": sum(int(m.metrics["requests"]) for m in mine),
                "failures": sum(int(m.metrics["failures"]) for m in mine),
                "output_tokens_per_s_median": t and t.median, "output_tokens_per_s_min": t and t.lo,
                "output_tokens_per_s_max": t and t.hi, "ttft_p50_median": med("ttft_p50"),
                "ttft_p99_median": med("ttft_p99"), "cold_requests": len(pool["cold"]),
                "ttft_cold_p50": percentile(pool["cold"], 50), "ttft_cold_p99": percentile(pool["cold"], 99),
                "warm_requests": len(pool["warm"]), "ttft_warm_p50": percentile(pool["warm"], 50),
                "ttft_warm_p99": percentile(pool["warm"], 99), "tpot_p50_median": med("tpot_p50"),
                "distinct_adapters_median": med("distinct_adapters"),
                "adapters_in_host_memory_max": max((m.metrics.get("adapters_in_host_memory") or 0) for m in mine),
                "para_over_lora_tok_s_median": r and r.median, "para_over_lora_tok_s_min": r and r.lo,
                "para_over_lora_tok_s_max": r and r.hi,
            })
    return rows


def memory_rows(ms: list[P.Measurement], systems: dict[str, FleetSystem], plan: FleetPlan) -> list[dict]:
    rows = []
    for name, fs in systems.items():
        mine = [m for m in ms if m.system == name and "adapter_host_bytes" in m.metrics]
        if not mine:
            continue
        per_adapter = [m.metrics["host_bytes_per_adapter"] for m in mine if m.metrics.get("host_bytes_per_adapter")]
        per_slot = [m.metrics["device_bytes_per_slot"] for m in mine if m.metrics.get("device_bytes_per_slot")]
        host = max(per_adapter) if per_adapter else None
        slot = max(per_slot) if per_slot else None
        device = max((m.metrics.get("adapter_device_bytes") or 0) for m in mine) or None
        rows.append({
            "system": name, "adapter": fs.description, "trainable_params": fs.params,
            "host_bytes_per_adapter": host,
            "adapters_in_host_memory_max": max(int(m.metrics.get("adapters_in_host_memory") or 0) for m in mine),
            "adapter_host_bytes_max": max((m.metrics.get("adapter_host_bytes") or 0) for m in mine),
            "device_slots": plan.device_slots, "device_bytes_per_slot": slot, "adapter_device_bytes": device,
            "adapters_in_2gib_host": BUDGET_BYTES // math.ceil(host) if host else None,
            "adapter_slots_in_2gib_device": BUDGET_BYTES // math.ceil(slot) if slot else None,
            "source": mine[-1].metrics.get("memory_source"),
        })
    return rows


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: _fmt(row.get(k)) for k in fields})


def write_fleet(ms, cold_warm, systems, plan, meta, run_dir: Path, timeline, notes=None) -> None:
    write_csv(run_dir / "rounds.csv", ROUND_FIELDS,
              [{"slot": m.slot, "round": m.round, "warmup": m.warmup, "system": m.system, "concurrency": m.level,
                **m.metrics} for m in ms])
    summary = summary_rows(ms, cold_warm)
    memory = memory_rows(ms, systems, plan)
    write_csv(run_dir / "summary.csv", SUMMARY_FIELDS, summary)
    write_csv(run_dir / "memory.csv", MEMORY_FIELDS, memory)
    write_csv(run_dir / "servers.csv", ["life", "system", "slots", "rounds", "start_s", "healthy_s", "startup_s",
                                        "stop_s"], timeline)
    for name in systems:
        starts = [e["startup_s"] for e in timeline if e["system"] == name and "startup_s" in e]
        if starts:
            meta["systems"][name]["startup_s"] = f"{P.spread(starts).median:.0f}"
    write_plot(summary, memory, run_dir / "fleet.png")
    write_report(ms, summary, memory, systems, plan, meta, run_dir / "report.md", notes)


def _meta(plan: FleetPlan, slots: list[P.Slot], label: str | None) -> dict:
    m = plan.model
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "base model": f"{m.describe()} ({plan.mode} mode), dtype {plan.dtype}",
        "adapters per system": f"{plan.adapters} (`tenant-0000` ... ) + 1 warm-up adapter, in one directory, "
                               "none loaded at start-up",
        "traffic": f"Zipf s={plan.zipf_exponent} over the {plan.adapters} adapters (tenant k has weight "
                   f"1/(k+1)^s), {plan.prompt_words}-word prompts, {plan.max_tokens} output tokens (ignore_eos), "
                   "streamed, greedy; request i of a phase is the same on both systems",
        "requests per concurrency level": plan.requests, "concurrency levels": list(plan.levels),
        "host cache / device slots": f"{plan.host_cache} / {plan.device_slots} (both systems)",
        "engine flags (both systems)":
            f"`{' '.join(engine_flags(plan.seed, plan.dtype, plan.enforce_eager))}`, VLLM_CPU_KVCACHE_SPACE=1",
        "protocol": f"ABBA, {plan.rounds} measured round(s), one server at a time, a fresh server for every slot "
                    "(each starts with no tenant loaded); warm-up: base model + warm-up adapter only",
        "order": f"`{P.order_string(slots)}` ({len(P.lives(slots))} server starts)",
        "machine": P.machine(),
        "systems": {},
    }
    if label:
        meta["banner"] = label
    return meta


def _n(v, digits: int = 1) -> str:
    return "-" if v is None or v == "" else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _mib(v) -> str:
    return "-" if not v else f"{v / 2**20:.2f} MiB"


def write_report(ms, summary, memory, systems, plan, meta, path: Path, notes: str | None = None) -> None:
    lines = ["# Fleet load test: adapters loaded on first use, PARA vs vLLM multi-LoRA", ""]
    if meta.get("banner"):
        lines += [f"> {meta['banner']}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k not in ("systems", "banner")]
    lines += ["", "## Systems", "", "| system | adapter (trainable params) | server flags | environment | "
              "start-up s (median) |", "|---|---|---|---|---|"]
    for name, fs in systems.items():
        flags = " ".join("DIR" if f.endswith(f"{name}-fleet") else f for f in fs.flags)
        env = " ".join(f"{k}={'DIR' if v.endswith(f'{name}-fleet') else v}" for k, v in fs.env.items()) or "-"
        lines.append(f"| {name} | {fs.description} ({fs.params}) | `{flags}` | `{env}` | "
                     f"{meta['systems'].get(name, {}).get('startup_s', '-')} |")

    lines += ["", "## Throughput and time to first token", "",
              "Output tok/s: median [min-max] over the measured rounds; PARA/LoRA: median [min-max] of the "
              "per-round ratios. TTFT in ms. *Cold*: the first request for its adapter in that server (plus "
              "requests for it sent before that one's first token); *warm*: the others (pooled over rounds). "
              "Each server runs concurrency 4 first, then 16, so most cold requests fall in the c=4 phase.", "",
              "| system | c | requests (failed) | output tok/s | PARA/LoRA tok/s | TTFT p50 / p99 (all) | cold n | "
              "cold TTFT p50 / p99 | warm n | warm TTFT p50 / p99 | adapters used per server |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        tput = f"{_n(r['output_tokens_per_s_median'])} [{_n(r['output_tokens_per_s_min'])}-" \
               f"{_n(r['output_tokens_per_s_max'])}]"
        ratio = "-" if r["para_over_lora_tok_s_median"] is None else \
            f"{r['para_over_lora_tok_s_median']:.2f}x [{r['para_over_lora_tok_s_min']:.2f}-" \
            f"{r['para_over_lora_tok_s_max']:.2f}]"
        lines.append(f"| {r['system']} | {r['concurrency']} | {r['requests']} ({r['failures']}) | {tput} | {ratio} | "
                     f"{_n(r['ttft_p50_median'])} / {_n(r['ttft_p99_median'])} | {r['cold_requests']} | "
                     f"{_n(r['ttft_cold_p50'])} / {_n(r['ttft_cold_p99'])} | {r['warm_requests']} | "
                     f"{_n(r['ttft_warm_p50'])} / {_n(r['ttft_warm_p99'])} | {_n(r['distinct_adapters_median'], 0)} |")

    lines += ["", "## Adapter memory and adapters per 2 GiB", "",
              "Per worker. Host: adapters held in host memory (PARA: its first-use cache, measured from "
              "/metrics; LoRA: vLLM's CPU LoRA cache, computed as adapters cached x parameters x dtype bytes). "
              "Device: the slots allocated at start-up (PARA: `vllm_para:adapter_slot_bytes`; LoRA: "
              "`--max-loras` slots at `--max-lora-rank` on every linear layer, embedding and logits). "
              "Adapters in 2 GiB = floor(2 GiB / bytes per adapter).", "",
              "| system | bytes / adapter (host) | max adapters in host memory | host bytes (max) | adapters in "
              "2 GiB of host | bytes / device slot | device bytes (slots) | device slots in 2 GiB | source |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in memory:
        lines.append(f"| {r['system']} | {_mib(r['host_bytes_per_adapter'])} | {r['adapters_in_host_memory_max']} | "
                     f"{_mib(r['adapter_host_bytes_max'])} | {_n(r['adapters_in_2gib_host'])} | "
                     f"{_mib(r['device_bytes_per_slot'])} | {_mib(r['adapter_device_bytes'])} "
                     f"({r['device_slots']}) | {_n(r['adapter_slots_in_2gib_device'])} | {r['source']} |")
    lines.append("")
    for r in memory:
        if r["host_bytes_per_adapter"]:
            raw = r["trainable_params"] * 4
            lines.append(f"- {r['system']}: {r['trainable_params']} trainable parameters = {_mib(raw)} in float32; "
                         f"held in host memory: {_mib(r['host_bytes_per_adapter'])} per adapter "
                         f"({r['host_bytes_per_adapter'] / raw:.2f}x)")
    para = next((m for m in reversed(ms) if m.system == "para" and m.metrics.get("cache_misses") is not None), None)
    if para is not None:
        lines += [f"- PARA first-use loads in the last server: {int(para.metrics['cache_misses'])} (cache misses, "
                      f"re-loads after eviction included) for {para.metrics['distinct_adapters']} distinct tenants "
                      f"+ the warm-up adapter; mean load {_n(para.metrics.get('mean_load_s'), 3)} s "
                      "(`vllm_para:adapter_cold_load_seconds`)."]

    checks = _checks(ms, plan)
    lines += ["", "## Checks", "", "| check | verdict | detail |", "|---|---|---|"]
    lines += [f"| {c} | **{v}** | {d} |" for c, v, d in checks]
    lines += ["", "## Per-round output tok/s", ""]
    rounds = P.rounds_of(ms)
    lines += ["| system | c | " + " | ".join(f"r{r}" for r in rounds) + " |", "|---|---|" + "---|" * len(rounds)]
    for system in P.systems_of(ms):
        for level in P.levels(ms):
            by = {m.round: m for m in P.measured(ms) if m.system == system and m.level == level}
            lines.append(f"| {system} | {level} | " + " | ".join(
                f"{by[r].metrics['output_tokens_per_s']:.1f}" if r in by else "-" for r in rounds) + " |")
    errors = [(m.system, m.round, m.level, e) for m in ms for e in m.metrics.get("errors", [])]
    if errors:
        lines += ["", "## Errors (first few)", ""] + [f"- {s} round {r} c={c}: `{e}`" for s, r, c, e in errors[:20]]
    if notes:
        lines += ["", notes.rstrip()]
    lines += ["", "## Plot", "", "![fleet](fleet.png)", ""]
    path.write_text("\n".join(lines))


def _checks(ms: list[P.Measurement], plan: FleetPlan) -> list[tuple[str, str, str]]:
    out = []
    failed = sum(int(m.metrics.get("failures", 0)) for m in ms)
    total = sum(int(m.metrics.get("requests", 0)) for m in ms)
    out.append(("zero failed requests (warm-up included)", "PASS" if failed == 0 else "FAIL",
                f"{failed} failed of {total}"))
    para = [m for m in P.measured(ms) if m.system == "para" and "adapters_in_host_memory" in m.metrics]
    if para:
        worst = max(int(m.metrics["adapters_in_host_memory"]) for m in para)
        out.append((f"PARA host cache bound: <= {plan.host_cache} adapters in host memory after every phase",
                    "PASS" if worst <= plan.host_cache else "FAIL", f"max {worst}"))
    n_rounds = len(P.rounds_of(ms))
    out.append(("ABBA: both systems in every measured round", "PASS" if all(
        {m.system for m in P.measured(ms) if m.round == r} == set(plan.systems) for r in P.rounds_of(ms))
        and n_rounds else "FAIL", f"{n_rounds} measured round(s)"))
    return out


def write_plot(summary: list[dict], memory: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    systems = list(dict.fromkeys(r["system"] for r in summary))
    levels = sorted({r["concurrency"] for r in summary})
    width = 0.8 / max(1, len(systems))
    ax = axes[0]
    for i, s in enumerate(systems):
        rows = {r["concurrency"]: r for r in summary if r["system"] == s}
        xs = [j + i * width for j, c in enumerate(levels) if c in rows]
        med = [rows[c]["output_tokens_per_s_median"] or 0 for c in levels if c in rows]
        lo = [m - (rows[c]["output_tokens_per_s_min"] or 0) for m, c in zip(med, [c for c in levels if c in rows])]
        hi = [(rows[c]["output_tokens_per_s_max"] or 0) - m for m, c in zip(med, [c for c in levels if c in rows])]
        ax.bar(xs, med, width, yerr=[lo, hi], capsize=3, label=s)
    ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(levels))], [f"c={c}" for c in levels])
    ax.set_ylabel("output tokens / s")
    ax.set_title("throughput (median, min-max)")
    ax.legend()
    ax = axes[1]  # cold vs warm TTFT p50 per level (bars), p99 as a marker
    labels, p50s, p99s, colors = [], [], [], []
    for c in levels:
        for s in systems:
            row = next((r for r in summary if r["system"] == s and r["concurrency"] == c), None)
            for kind in ("cold", "warm"):
                if row is None or row[f"ttft_{kind}_p50"] is None:
                    continue
                labels.append(f"{s} {kind} c={c} (n={row[f'{kind}_requests']})")
                p50s.append(row[f"ttft_{kind}_p50"])
                p99s.append(row[f"ttft_{kind}_p99"])
                colors.append(("tab:red" if kind == "cold" else "tab:green") if s == "para" else
                              ("lightcoral" if kind == "cold" else "lightgreen"))
    ax.bar(range(len(p50s)), p50s, color=colors, label="p50")
    ax.plot(range(len(p99s)), p99s, "k_", markersize=14, label="p99")
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=40, ha="right")
    ax.set_ylabel("TTFT (ms)")
    ax.set_title("time to first token: cold vs warm (bar p50, dash p99)")
    ax.legend()
    ax = axes[2]
    names = [r["system"] for r in memory]
    host = [r["adapters_in_2gib_host"] or 0 for r in memory]
    dev = [r["adapter_slots_in_2gib_device"] or 0 for r in memory]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], host, 0.4, label="host cache")
    ax.bar([x + 0.2 for x in xs], dev, 0.4, label="device slots")
    ax.set_xticks(list(xs), names)
    ax.set_yscale("log")
    ax.set_ylabel("adapters")
    ax.set_title("adapters held in 2 GiB")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _ms(v) -> str:
    return "-" if v is None else f"{v:.0f} ms"
