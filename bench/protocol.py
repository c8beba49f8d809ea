"""The ABBA measurement protocol, as pure Python (no vLLM, no Locust, no torch).

Shared by `bench.compare` (servers), `bench/offline_throughput.py` (offline
engines) and `bench/gpu/decode_step.py` (CUDA-graph variants), and unit-tested
without any of them (tests/test_bench_protocol.py).

Why: measuring each system once, one after the other, lets machine drift (another job
starting, thermal or frequency changes, page cache) land on whichever ran second. Here:

* **One system at a time.** A run is a sequence of *slots*; a slot measures one system
  at every load level. Only one server/engine exists at any moment.
* **ABBA order.** Round r runs the systems forward when r is even and reversed when r
  is odd: `A B | B A | A B | B A ...` (with more systems `A B C | C B A | ...`). A linear
  drift over a pair of rounds then costs every system the same on average.
* **Warm-up excluded.** Every fresh server/engine is warmed up before its first measured
  slot, and optional whole warm-up rounds (negative round numbers) run before round 0;
  their measurements are recorded but never enter a median or a ratio.
* **Per-round ratios.** PARA/base is computed within each round (the two measurements
  closest in time), then summarized by the median over rounds with the min-max spread,
  never as a ratio of two medians.
* **Reuse of adjacent slots (optional).** The ABBA order puts the same system in two
  adjacent slots at every round boundary (`A B | B A`); with `reuse=True` those two slots
  share one server/engine instead of stopping and restarting it. The R-1 boundaries
  alternate between the systems (two systems), so each gets the same number of
  second-use slots when R is odd, or when R is even and one warm-up round precedes
  round 0 (its boundary gives round 0's first system a reused slot too). Each slot
  records whether it started a fresh server (`fresh`). `reuse=False` (a fresh
  server/engine for every slot) needs no such argument and is what full runs default to.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from dataclasses import dataclass, field
from typing import Iterable, Sequence

# Targets of issue 13 (medians of the ABBA rounds).
TPUT_MIN_VS_BASE = 0.97  # PARA / base output tokens/s, at every level
TTFT_MAX_VS_BASE = 1.05  # PARA / base TTFT p50, at every level
LORA16_MIN_SPEEDUP = 2.5  # PARA / LoRA-r16 output tokens/s ...
LORA16_MIN_CONCURRENCY = 4  # ... at concurrency >= 4
MIN_ROUNDS = 3  # fewer measured rounds is not a valid protocol run


@dataclass(frozen=True)
class Slot:
    index: int  # position in the run, 0-based
    round: int  # measured rounds are 0..R-1; warm-up rounds are -W..-1
    system: str
    fresh: bool  # True: this slot starts a new server/engine; False: reuses the previous slot's

    @property
    def warmup(self) -> bool:
        return self.round < 0


def round_order(systems: Sequence[str], round_: int) -> list[str]:
    """The systems in the order round `round_` runs them: forward on even rounds, reversed on odd."""
    return list(systems) if round_ % 2 == 0 else list(reversed(systems))


def schedule(systems: Sequence[str], rounds: int, warmup_rounds: int = 0, reuse: bool = False) -> list[Slot]:
    """Every slot of a run, in order: `warmup_rounds` unmeasured rounds, then `rounds` measured ones."""
    if rounds < 1 or warmup_rounds < 0:
        raise ValueError("need rounds >= 1 and warmup_rounds >= 0")
    if not systems or len(set(systems)) != len(systems):
        raise ValueError(f"systems must be distinct and non-empty, got {list(systems)}")
    slots: list[Slot] = []
    for r in range(-warmup_rounds, rounds):
        for system in round_order(systems, r):
            fresh = not (reuse and slots and slots[-1].system == system)
            slots.append(Slot(len(slots), r, system, fresh))
    return slots


def lives(slots: Sequence[Slot]) -> list[list[Slot]]:
    """The slots grouped by server/engine life: each group starts with a fresh slot."""
    groups: list[list[Slot]] = []
    for slot in slots:
        if slot.fresh or not groups:
            groups.append([slot])
        else:
            if groups[-1][-1].system != slot.system:
                raise ValueError(f"slot {slot.index} reuses a {groups[-1][-1].system} engine for {slot.system}")
            groups[-1].append(slot)
    return groups


def order_string(slots: Sequence[Slot]) -> str:
    """`base para | para base | ...` with warm-up rounds in brackets and reused slots marked `*`."""
    out, current = [], None
    for s in slots:
        if s.round != current:
            out.append([])
            current = s.round
        out[-1].append(s.system + ("" if s.fresh else "*"))
    rounds = sorted({s.round for s in slots})
    parts = []
    for r, names in zip(rounds, out):
        text = " ".join(names)
        parts.append(f"[warm-up: {text}]" if r < 0 else text)
    return " | ".join(parts)


@dataclass(frozen=True)
class Measurement:
    """One system at one load level in one slot."""

    round: int
    system: str
    level: int
    metrics: dict
    warmup: bool = False  # a warm-up phase/round: recorded, never summarized
    slot: int = -1
    fresh: bool = True

    @property
    def measured(self) -> bool:
        return not self.warmup and self.round >= 0


@dataclass(frozen=True)
class Spread:
    median: float
    lo: float
    hi: float
    values: tuple = field(default=())  # per round, in round order

    @property
    def n(self) -> int:
        return len(self.values)

    def fmt(self, digits: int = 1, suffix: str = "") -> str:
        if self.n == 1:
            return f"{self.median:.{digits}f}{suffix}"
        return f"{self.median:.{digits}f}{suffix} [{self.lo:.{digits}f}-{self.hi:.{digits}f}]"


def machine(cpuinfo: str | None = None) -> str:
    """What a report's `machine:` line says: architecture, CPU count, CPU model and whether it computes
    bfloat16 natively (AVX512-BF16 / AMX: without, a bf16 run measures PyTorch's emulation), OS."""
    from vllm_para.training.train import cpu_has_native_bf16, read_cpuinfo

    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
    model = next((line.partition(":")[2].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown CPU")
    native = "yes" if cpu_has_native_bf16(cpuinfo) else "no"
    return f"{platform.machine()}, {os.cpu_count()} CPUs ({model}; native bfloat16: {native}), {platform.platform()}"


def percentile(values: Iterable[float], q: float) -> float | None:
    """THE percentile of every report in this package: linear interpolation between the two
    nearest ranks (numpy's default `linear` method; q in 0..100, so q=50 is the median and q=0 /
    q=100 the min / max). None when there are no values. (Until 2026-12-03 the mixed-ITL and soak
    reports used nearest-rank percentiles; their committed p99s are not interpolated.)"""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def spread(values: Iterable[float]) -> Spread | None:
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    return Spread(statistics.median(xs), min(xs), max(xs), tuple(xs))


@dataclass(frozen=True)
class MedianInterval:
    """A distribution-free confidence interval of a median: [lo, hi] are order statistics of the
    values and `coverage` the probability, exact for any continuous distribution, that such an
    interval contains the true median."""

    lo: float
    hi: float
    coverage: float

    def side_of(self, threshold: float) -> str:
        """'above' / 'below' if the whole interval is on that side of `threshold`, else 'straddles'."""
        if self.lo >= threshold:
            return "above"
        if self.hi < threshold:
            return "below"
        return "straddles"


def median_interval(values: Iterable[float], confidence: float = 0.90) -> MedianInterval | None:
    """The narrowest interval [x_(j), x_(n+1-j)] of the sorted values whose coverage of the
    median is at least `confidence` (each value falls below the median with probability 1/2,
    so coverage = 1 - 2 P(Binomial(n, 1/2) <= j - 1)). With too few values for `confidence`
    (4 rounds reach 87.5% at most) it is [min, max] with the coverage those reach. Rounds of the
    ABBA protocol are exchangeable measurements, which is all this assumes. None if no values."""
    xs = sorted(float(v) for v in values if v is not None)
    n = len(xs)
    if n == 0:
        return None

    def coverage(j: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(j)) / 2.0 ** n

    j = 1
    while j + 1 <= (n + 1) // 2 and coverage(j + 1) >= confidence:
        j += 1
    return MedianInterval(xs[j - 1], xs[n - j], coverage(j))


def measured(ms: Iterable[Measurement]) -> list[Measurement]:
    return [m for m in ms if m.measured]


def levels(ms: Iterable[Measurement]) -> list[int]:
    return sorted({m.level for m in measured(ms)})


def systems_of(ms: Iterable[Measurement]) -> list[str]:
    return list(dict.fromkeys(m.system for m in measured(ms)))


def rounds_of(ms: Iterable[Measurement]) -> list[int]:
    return sorted({m.round for m in measured(ms)})


def per_system(ms: Iterable[Measurement], metric: str) -> dict[tuple[str, int], Spread]:
    """(system, level) -> median and min-max over the measured rounds of `metric`."""
    by: dict[tuple[str, int], list] = {}
    for m in sorted(measured(ms), key=lambda m: m.round):
        by.setdefault((m.system, m.level), []).append(m.metrics.get(metric))
    return {k: s for k, v in by.items() if (s := spread(v)) is not None}


def round_ratios(ms: Iterable[Measurement], num: str, den: str, metric: str) -> dict[int, list[tuple[int, float]]]:
    """level -> [(round, num/den of `metric` within that round)], measured rounds where both have a value."""
    table: dict[tuple[int, int, str], float] = {}
    for m in measured(ms):
        if m.metrics.get(metric) is not None:
            table[(m.level, m.round, m.system)] = float(m.metrics[metric])
    out: dict[int, list[tuple[int, float]]] = {}
    for (level, round_, system), value in sorted(table.items()):
        if system != num:
            continue
        other = table.get((level, round_, den))
        if other:  # absent or zero: no ratio for that round
            out.setdefault(level, []).append((round_, value / other))
    return out


def ratio_spreads(ms: Iterable[Measurement], num: str, den: str, metric: str) -> dict[int, Spread]:
    """level -> median and min-max over rounds of the per-round ratio num/den of `metric`."""
    return {level: spread(r for _, r in pairs) for level, pairs in round_ratios(ms, num, den, metric).items()}


@dataclass(frozen=True)
class Verdict:
    target: str
    verdict: str  # PASS | FAIL | n/a
    detail: str


def _check(pairs: list[tuple[int, Spread]], ok) -> str:
    if not pairs:
        return "n/a"
    return "PASS" if all(ok(s.median) for _, s in pairs) else "FAIL"


def _detail(pairs: list[tuple[int, Spread]], label: str = "c") -> str:
    return ", ".join(f"{label}={lv}: {s.fmt(2, 'x')}" for lv, s in pairs) or "not measured in this run"


def _settled(pairs: list[tuple[int, Spread]], threshold: float, label: str = "c") -> str:
    """'; not settled (...): c=..' naming the levels whose median's interval (median_interval over
    the rounds) contains `threshold`, where the mark is the median's, within the run's noise; '' if none."""
    open_ = []
    for lv, s in pairs:
        ci = median_interval(s.values)
        if ci is not None and ci.side_of(threshold) == "straddles":
            open_.append(f"{label}={lv} ({ci.lo:.2f}-{ci.hi:.2f}, {ci.coverage:.0%})")
    return f"; not settled (the median's interval contains {threshold}): {', '.join(open_)}" if open_ else ""


def targets(ms: Sequence[Measurement], para: str = "para", base: str = "base", lora16: str = "lora16",
            tput: str = "output_tokens_per_s", ttft: str = "ttft_p50", level_label: str = "c",
            lora_min_level: int = LORA16_MIN_CONCURRENCY, min_rounds: int = MIN_ROUNDS) -> list[Verdict]:
    """Pass/fail of each target on the medians of the per-round ratios ([min-max] in the detail,
    and the levels where the median's distribution-free interval contains the threshold)."""
    out = []
    n_rounds = len(rounds_of(ms))
    out.append(Verdict(f"ABBA protocol: >= {min_rounds} measured rounds, warm-up excluded",
                       "PASS" if n_rounds >= min_rounds else "FAIL",
                       f"{n_rounds} measured round(s)" + ("" if n_rounds >= min_rounds else
                                                           ": too few rounds, the verdicts below are not valid")))
    t = sorted(ratio_spreads(ms, para, base, tput).items())
    out.append(Verdict(f"PARA/base output tok/s >= {TPUT_MIN_VS_BASE} at every level",
                       _check(t, lambda x: x >= TPUT_MIN_VS_BASE),
                       _detail(t, level_label) + _settled(t, TPUT_MIN_VS_BASE, level_label)))
    f = sorted(ratio_spreads(ms, para, base, ttft).items())
    out.append(Verdict(f"PARA/base TTFT p50 <= {TTFT_MAX_VS_BASE} at every level",
                       _check(f, lambda x: x <= TTFT_MAX_VS_BASE),
                       _detail(f, level_label) + _settled(f, TTFT_MAX_VS_BASE, level_label)))
    lo = sorted((lv, s) for lv, s in ratio_spreads(ms, para, lora16, tput).items() if lv >= lora_min_level)
    out.append(Verdict(f"PARA/LoRA-r16 output tok/s >= {LORA16_MIN_SPEEDUP} at {level_label} >= {lora_min_level}",
                       _check(lo, lambda x: x >= LORA16_MIN_SPEEDUP),
                       _detail(lo, level_label) + _settled(lo, LORA16_MIN_SPEEDUP, level_label)))
    all_ms = [m for m in ms if "failures" in m.metrics]
    if all_ms:
        failed = sum(int(m.metrics["failures"]) for m in all_ms)
        total = sum(int(m.metrics.get("requests", 0)) for m in all_ms)
        out.append(Verdict("zero failed requests (warm-up included)", "PASS" if failed == 0 else "FAIL",
                           f"{failed} failed of {total}"))
    return out
