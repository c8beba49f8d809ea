"""Write summary.csv, report.md and the PNG plots of one comparison run."""

from __future__ import annotations

import csv
from pathlib import Path

SUMMARY_FIELDS = ["system", "concurrency", "requests", "failures", "output_tokens_per_s", "requests_per_s",
                  "ttft_p50", "ttft_p99", "itl_p50", "itl_p99", "tpot_p50", "latency_p50", "wall_s"]
PLOTS = {  # file -> (metric, y label)
    "throughput.png": ("output_tokens_per_s", "output tokens / s"),
    "ttft_p50.png": ("ttft_p50", "TTFT p50 (ms)"),
    "itl_p50.png": ("itl_p50", "ITL p50 (ms)"),
}
BASE_SHARE, LORA16_SPEEDUP, LORA16_MIN_CONCURRENCY = 0.95, 1.3, 4


def write_summary(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in SUMMARY_FIELDS})


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(SUMMARY_FIELDS) + " |", "|" + "---|" * len(SUMMARY_FIELDS)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k)) or "-" for k in SUMMARY_FIELDS) + " |")
    return lines


def _throughput(rows: list[dict]) -> dict[tuple[str, int], float]:
    return {(r["system"], r["concurrency"]): r["output_tokens_per_s"] for r in rows}


def ratios(rows: list[dict]) -> list[dict]:
    """PARA's output-token throughput over each other system's, per concurrency."""
    tput = _throughput(rows)
    out = []
    for c in sorted({r["concurrency"] for r in rows}):
        para = tput.get(("para", c))
        entry = {"concurrency": c}
        for other in ("base", "lora-matched", "lora16"):
            theirs = tput.get((other, c))
            entry[other] = para / theirs if para is not None and theirs else None
        out.append(entry)
    return out


def targets(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(target, PASS | FAIL | n/a, detail) for each of the project's targets."""
    rs = ratios(rows)
    result = []
    base = [(e["concurrency"], e["base"]) for e in rs if e["base"] is not None]
    result.append((f"PARA >= {BASE_SHARE}x base throughput at every concurrency",
                   _verdict(base, lambda x: x >= BASE_SHARE), _detail(base)))
    lora = [(e["concurrency"], e["lora16"]) for e in rs
            if e["lora16"] is not None and e["concurrency"] >= LORA16_MIN_CONCURRENCY]
    result.append((f"PARA >= {LORA16_SPEEDUP}x LoRA rank-16 throughput at concurrency >= {LORA16_MIN_CONCURRENCY}",
                   _verdict(lora, lambda x: x >= LORA16_SPEEDUP), _detail(lora)))
    failures = sum(r["failures"] for r in rows)
    result.append(("zero failed requests", "PASS" if failures == 0 and rows else "FAIL",
                   f"{failures} failed of {sum(r['requests'] for r in rows)}"))
    return result


def _verdict(pairs, ok) -> str:
    if not pairs:
        return "n/a"
    return "PASS" if all(ok(x) for _, x in pairs) else "FAIL"


def _detail(pairs) -> str:
    return ", ".join(f"c={c}: {x:.2f}x" for c, x in pairs) or "not measured in this run"


def write_report(rows: list[dict], meta: dict, path: Path) -> None:
    lines = [f"# Load test: PARA vs vLLM multi-LoRA vs base ({meta['mode']} mode)", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k not in ("mode", "systems")]
    lines += ["", "## Systems", "", "| system | adapters | trainable params / adapter | server flags | start-up s |",
              "|---|---|---|---|---|"]
    for name, s in meta["systems"].items():
        lines.append(f"| {name} | {s['adapters']} | {s['params']} | `{s['flags']}` | {s['startup_s']} |")
    lines += ["", "## Results", "",
              "Throughput is output tokens per second of wall time of the load phase (first request sent to "
              "last byte read). TTFT, ITL, TPOT and latency in milliseconds: ITL over every inter-token gap "
              "of every request, TPOT = (latency - TTFT) / (tokens - 1) per request.", ""]
    lines += _table(rows)
    lines += ["", "## PARA throughput ratios (PARA / other)", "", "| concurrency | PARA/base | PARA/LoRA-matched | "
              "PARA/LoRA-16 |", "|---|---|---|---|"]
    for e in ratios(rows):
        cells = [f"{e[k]:.2f}x" if e[k] is not None else "-" for k in ("base", "lora-matched", "lora16")]
        lines.append(f"| {e['concurrency']} | " + " | ".join(cells) + " |")
    lines += ["", "## Targets", "", "| target | verdict | detail |", "|---|---|---|"]
    lines += [f"| {t} | **{v}** | {d} |" for t, v, d in targets(rows)]
    errors = [(r["system"], r["concurrency"], e) for r in rows for e in r.get("errors", [])]
    if errors:
        lines += ["", "## Errors (first few)", ""] + [f"- {s} c={c}: `{e}`" for s, c, e in errors]
    lines += ["", "## Plots", ""] + [f"![{f}]({f})" for f in PLOTS]
    path.write_text("\n".join(lines) + "\n")


def write_plots(rows: list[dict], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(dict.fromkeys(r["system"] for r in rows))
    paths = []
    for filename, (metric, label) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for system in systems:
            pts = sorted((r["concurrency"], r[metric]) for r in rows if r["system"] == system and r[metric] is not None)
            if pts:
                ax.plot([c for c, _ in pts], [v for _, v in pts], marker="o", label=system)
        ax.set_xscale("log", base=2)
        levels = sorted({r["concurrency"] for r in rows})
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.minorticks_off()
        ax.set_xlabel("concurrent users")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs concurrency")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not measured (e.g. beam search is not streamed)", ha="center",
                    transform=ax.transAxes)
        fig.tight_layout()
        fig.savefig(directory / filename, dpi=100)
        plt.close(fig)
        paths.append(directory / filename)
    return paths
