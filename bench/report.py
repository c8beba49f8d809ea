"""Write rounds.csv, summary.csv, ratios.csv, report.md and the PNG plots of one ABBA comparison run.

Every figure is computed by `bench.protocol` from the per-round measurements:
per-system medians with the min-max over measured rounds, and ratios as the median
(min-max) of per-round ratios. Warm-up measurements appear in rounds.csv (warmup=1) only.
"""

from __future__ import annotations

import csv
from pathlib import Path

from . import protocol as P
from .prometheus import METRICS as ENGINE_METRICS
from .process_cpu import METRICS as CPU_METRICS

METRICS = ["output_tokens_per_s", "requests_per_s", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99", "tpot_p50",
           "latency_p50", "wall_s", *ENGINE_METRICS, *CPU_METRICS]
ROUND_FIELDS = ["slot", "round", "warmup", "fresh", "system", "concurrency", "requests", "failures", *METRICS]
SUMMARY_FIELDS = ["system", "concurrency", "rounds", "requests_per_round", "failures"] + [
    f"{m}_{s}" for m in METRICS for s in ("median", "min", "max")]
# (label, numerator, denominator, metric); > 1 is better for throughput, < 1 for latencies
RATIOS = [
    ("PARA/base output tok/s", "para", "base", "output_tokens_per_s"),
    ("PARA/base TTFT p50", "para", "base", "ttft_p50"),
    ("PARA/base TTFT p99", "para", "base", "ttft_p99"),
    ("PARA/base ITL p50", "para", "base", "itl_p50"),
    ("PARA/base ITL p99", "para", "base", "itl_p99"),
    ("PARA/base TPOT p50", "para", "base", "tpot_p50"),
    ("PARA/base engine TPOT (mean)", "para", "base", "engine_tpot_ms"),
    ("PARA/base engine prefill (mean)", "para", "base", "engine_prefill_ms"),
    ("PARA/base API-server CPU per token", "para", "base", "cpu_api_ms_per_tok"),
    ("PARA/LoRA-matched output tok/s", "para", "lora-matched", "output_tokens_per_s"),
    ("PARA/LoRA-16 output tok/s", "para", "lora16", "output_tokens_per_s"),
]
PLOTS = {  # file -> (metric, y label)
    "throughput.png": ("output_tokens_per_s", "output tokens / s"),
    "ttft_p50.png": ("ttft_p50", "TTFT p50 (ms)"),
    "itl_p50.png": ("itl_p50", "ITL p50 (ms)"),
}


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_rounds(ms: list[P.Measurement], path: Path) -> None:
    """Every measurement, warm-up included, in run order."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROUND_FIELDS, extrasaction="ignore")
        w.writeheader()
        for m in ms:
            w.writerow({"slot": m.slot, "round": m.round, "warmup": _fmt(m.warmup or m.round < 0),
                        "fresh": _fmt(m.fresh), "system": m.system, "concurrency": m.level,
                        **{k: _fmt(m.metrics.get(k)) for k in ("requests", "failures", *METRICS)}})


def summary_rows(ms: list[P.Measurement]) -> list[dict]:
    spreads = {m: P.per_system(ms, m) for m in METRICS}
    rows = []
    for system in P.systems_of(ms):
        for level in P.levels(ms):
            mine = [m for m in P.measured(ms) if m.system == system and m.level == level]
            if not mine:
                continue
            row = {"system": system, "concurrency": level, "rounds": len(mine),
                   "requests_per_round": mine[0].metrics.get("requests"),
                   "failures": sum(int(m.metrics.get("failures", 0)) for m in mine)}
            for metric in METRICS:
                s = spreads[metric].get((system, level))
                row.update({f"{metric}_median": s and s.median, f"{metric}_min": s and s.lo,
                            f"{metric}_max": s and s.hi})
            rows.append(row)
    return rows


def write_summary(ms: list[P.Measurement], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        for row in summary_rows(ms):
            w.writerow({k: _fmt(row.get(k)) for k in SUMMARY_FIELDS})


def ratio_rows(ms: list[P.Measurement]) -> list[dict]:
    rows = []
    for label, num, den, metric in RATIOS:
        for level, pairs in sorted(P.round_ratios(ms, num, den, metric).items()):
            s = P.spread(r for _, r in pairs)
            rows.append({"ratio": label, "concurrency": level, "median": s.median, "min": s.lo, "max": s.hi,
                         "per_round": ";".join(f"r{r}={x:.3f}" for r, x in pairs)})
    return rows


def write_ratios(ms: list[P.Measurement], path: Path) -> None:
    fields = ["ratio", "concurrency", "median", "min", "max", "per_round"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for row in ratio_rows(ms):
            w.writerow({k: _fmt(row[k]) for k in fields})


def _cell(s: P.Spread | None, digits: int = 1) -> str:
    return "-" if s is None else s.fmt(digits)


def _side_table(ms: list[P.Measurement], sp: dict, metrics, digits: int, intro: str, headers) -> list[str]:
    """A per-(system, level) table of `metrics` (medians [min-max]); nothing if none was measured."""
    if not any(sp[m] for m in metrics):
        return []
    lines = ["", intro, "", "| system | concurrency | " + " | ".join(headers) + " |",
             "|---|---|" + "---|" * len(headers)]
    for row in summary_rows(ms):
        key = (row["system"], row["concurrency"])
        lines.append(f"| {row['system']} | {row['concurrency']} | "
                     + " | ".join(_cell(sp[m].get(key), digits) for m in metrics) + " |")
    return lines


def report_head(title: str, label: str | None = None) -> list[str]:
    """A report's first lines: its title, and the run's label quoted under it when there is one."""
    return [f"# {title}", ""] + ([f"> {label}", ""] if label else [])


def write_report(ms: list[P.Measurement], meta: dict, path: Path, notes: str | None = None) -> None:
    title = meta.get("title") or f"Load test: PARA vs vLLM multi-LoRA vs base ({meta['mode']} mode, ABBA protocol)"
    lines = report_head(title, meta.get("banner"))
    lines += [f"- {k}: {v}" for k, v in meta.items() if k not in ("mode", "systems", "title", "banner")]
    lines += ["", "## Systems", "", "| system | adapters | trainable params / adapter | server flags | "
              "start-up s (median of fresh starts) |", "|---|---|---|---|---|"]
    for name, s in meta.get("systems", {}).items():
        lines.append(f"| {name} | {s['adapters']} | {s['params']} | `{s['flags']}` | {s.get('startup_s', '-')} |")

    lines += ["", "## Results (median [min-max] over the measured ABBA rounds)", "",
              "Throughput is output tokens per second of wall time of a load phase (first request sent to "
              "last byte read). TTFT, ITL, TPOT in milliseconds: ITL over every inter-token gap of every "
              "request, TPOT = (latency - TTFT) / (tokens - 1) per request. Warm-up phases are excluded.", "",
              "| system | concurrency | rounds | failures | output tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 "
              "| TPOT p50 |", "|---|---|---|---|---|---|---|---|---|---|"]
    sp = {m: P.per_system(ms, m) for m in METRICS}
    for row in summary_rows(ms):
        key = (row["system"], row["concurrency"])
        cells = [_cell(sp[m].get(key)) for m in ("output_tokens_per_s", "ttft_p50", "ttft_p99", "itl_p50",
                                                  "itl_p99", "tpot_p50")]
        lines.append(f"| {row['system']} | {row['concurrency']} | {row['rounds']} | {row['failures']} | "
                     + " | ".join(cells) + " |")
    lines += _side_table(ms, sp, ENGINE_METRICS, 2,
                         "Engine side (vLLM's request histograms, means per phase, ms): what the engine core "
                         "stamped, without the API server, HTTP and the client.",
                         ("queue", "prefill", "TPOT (decode time per token after the first)"))
    lines += _side_table(ms, sp, CPU_METRICS, 3,
                         "CPU time per generated token (ms, user + system, from /proc, read before and after each "
                         "phase): the API server, vLLM's engine-core process (it busy-polls) and the model worker "
                         "share this machine's cores with the load generator.",
                         ("API server", "engine core", "worker"))

    lines += ["", "## Ratios (median [min-max] of the per-round ratios)", "",
              "Each ratio is computed within a round (the two measurements closest in time), then summarized "
              "over rounds. Throughput: higher is better for PARA; latencies: lower is better. The engine rows "
              "come from vLLM's own request histograms (`/metrics`, scraped before and after each phase; stamped "
              "by the engine core, so without the API server, HTTP and the client): mean prefill time per "
              "request, and decode time per generated token after the first.", ""]
    rr = ratio_rows(ms)
    levels = P.levels(ms)
    present = [label for label, *_ in RATIOS if any(r["ratio"] == label for r in rr)]
    if present:
        lines += ["| ratio | " + " | ".join(f"c={c}" for c in levels) + " |", "|---|" + "---|" * len(levels)]
        for label in present:
            by = {r["concurrency"]: r for r in rr if r["ratio"] == label}
            cells = [f"{by[c]['median']:.3f} [{by[c]['min']:.3f}-{by[c]['max']:.3f}]" if c in by else "-"
                     for c in levels]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    else:
        lines.append("(no ratio: PARA and its comparison systems were not all measured)")

    lines += ["", "## Targets (on the medians of the per-round ratios)", "", "| target | verdict | detail |",
              "|---|---|---|"]
    lines += [f"| {v.target} | **{v.verdict}** | {v.detail} |" for v in P.targets(ms)]

    lines += ["", "## Per-round output tok/s", "", "Slots in run order; `*` = a slot that reused the "
              "previous slot's server (same system, adjacent in the ABBA order).", ""]
    rounds = P.rounds_of(ms)
    lines += ["| system | concurrency | " + " | ".join(f"r{r}" for r in rounds) + " |",
              "|---|---|" + "---|" * len(rounds)]
    for system in P.systems_of(ms):
        for level in levels:
            by = {m.round: m for m in P.measured(ms) if m.system == system and m.level == level}
            cells = [(f"{by[r].metrics['output_tokens_per_s']:.1f}" + ("" if by[r].fresh else "*")) if r in by
                     else "-" for r in rounds]
            lines.append(f"| {system} | {level} | " + " | ".join(cells) + " |")

    errors = [(m.system, m.round, m.level, e) for m in ms for e in m.metrics.get("errors", [])]
    if errors:
        lines += ["", "## Errors (first few)", ""] + [f"- {s} round {r} c={c}: `{e}`" for s, r, c, e in errors[:20]]
    if notes:
        lines += ["", notes.rstrip()]
    lines += ["", "## Plots", "", "Medians over rounds; bars span the min-max.", ""]
    lines += [f"![{f}]({f})" for f in PLOTS]
    path.write_text("\n".join(lines) + "\n")


def write_plots(ms: list[P.Measurement], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = P.levels(ms)
    paths = []
    for filename, (metric, label) in PLOTS.items():
        spreads = P.per_system(ms, metric)
        fig, ax = plt.subplots(figsize=(6, 4))
        for system in P.systems_of(ms):
            pts = sorted((c, spreads[(system, c)]) for c in levels if (system, c) in spreads)
            if pts:
                xs, ss = [c for c, _ in pts], [s for _, s in pts]
                ax.errorbar(xs, [s.median for s in ss], yerr=[[s.median - s.lo for s in ss],
                                                             [s.hi - s.median for s in ss]],
                            marker="o", capsize=3, label=system)
        ax.set_xscale("log", base=2)
        if levels:
            ax.set_xticks(levels, [str(c) for c in levels])
        ax.minorticks_off()
        ax.set_xlabel("concurrent users")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs concurrency (median, min-max)")
        ax.grid(True, alpha=0.3)
        if ax.lines or ax.containers:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not measured (e.g. beam search is not streamed)", ha="center",
                    transform=ax.transAxes)
        fig.tight_layout()
        fig.savefig(directory / filename, dpi=100)
        plt.close(fig)
        paths.append(directory / filename)
    return paths
