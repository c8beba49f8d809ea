"""The one Prometheus reader of the measurement package (on `prometheus_client`'s parser).

`samples(text)` / `scrape_samples(url)`: every sample as {'name{label="v",...}': value} (what the
fleet and soak runs read: PARA's gauges and counters). `totals` / `phase_metrics` / `scrape`:
engine-side timings of one load phase, from vLLM's own `/metrics` (scraped before and after).

The client's TTFT and TPOT include the API server, HTTP and the load generator. vLLM's request
histograms are stamped by the engine core (scheduled -> first token -> last token), so comparing
the two says whether a cost sits in the engine's steps or in front of them:

- `engine_queue_ms`: mean time a request waited before its first scheduling;
- `engine_prefill_ms`: mean time from first scheduling to first token;
- `engine_tpot_ms`: decode time over generated tokens after the first, i.e. the engine's time per
  output token.
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

HISTOGRAMS = {  # our metric -> vLLM histogram (seconds)
    "engine_queue_ms": "vllm:request_queue_time_seconds",
    "engine_prefill_ms": "vllm:request_prefill_time_seconds",
    "engine_decode": "vllm:request_decode_time_seconds",
}
GENERATED = "vllm:generation_tokens"  # counter (exposed as ..._total)
METRICS = ("engine_queue_ms", "engine_prefill_ms", "engine_tpot_ms")


def _key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def samples(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} for every sample (labels sorted by name; a
    counter's sample keeps its `_total` suffix)."""
    return {_key(s.name, s.labels): s.value for family in text_string_to_metric_families(text)
            for s in family.samples}


def _get(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout) as resp:
        return resp.read().decode()


def scrape_samples(url: str, timeout: float = 30.0) -> dict[str, float]:
    """`samples` of the server at `url`; empty when the scrape fails."""
    try:
        return samples(_get(url, timeout))
    except OSError:
        return {}


def totals(text: str) -> dict[str, float]:
    """Sums and counts of the histograms above and the generated-token counter, over all label sets."""
    wanted = set(HISTOGRAMS.values()) | {GENERATED}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:
            continue
        for sample in family.samples:
            if sample.name in (f"{family.name}_sum", f"{family.name}_count", f"{family.name}_total"):
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def phase_metrics(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Engine timings (ms) of the requests that finished between two scrapes; None when absent."""
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    out: dict[str, float | None] = {}
    for key in ("engine_queue_ms", "engine_prefill_ms"):
        n = delta(f"{HISTOGRAMS[key]}_count")
        out[key] = 1000.0 * delta(f"{HISTOGRAMS[key]}_sum") / n if n > 0 else None
    requests = delta(f"{HISTOGRAMS['engine_decode']}_count")
    after_first = delta(f"{GENERATED}_total") - requests  # the decode phase makes every token but the first
    out["engine_tpot_ms"] = (1000.0 * delta(f"{HISTOGRAMS['engine_decode']}_sum") / after_first
                             if requests > 0 and after_first > 0 else None)
    return out


def scrape(url: str, timeout: float = 10.0) -> dict[str, float]:
    """`totals` of the server at `url` (empty if the scrape fails: the phase then reports None)."""
    try:
        return totals(_get(url, timeout))
    except OSError:
        return {}
