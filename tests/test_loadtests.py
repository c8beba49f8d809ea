"""`python -m loadtests.compare` end to end in small mode (real servers + Locust, ABBA protocol), trimmed
for CI, plus quick unit tests of the traffic generator, the matched-rank solver and the target verdicts.
The protocol's logic itself is unit-tested in tests/test_bench_protocol.py."""

from __future__ import annotations

import csv
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SYSTEMS = ["base", "para"]
LEVELS = [1, 2]
REQUESTS = 4
ROUNDS = 3


def test_traffic_is_seeded_and_follows_the_distribution():
    from loadtests.traffic import Traffic, model_weights

    t = Traffic(("a", "b", "c"), "zipf", 1.0, prompt_words=7, seed=3)
    assert [t.request(i) for i in range(20)] == [Traffic(("a", "b", "c"), "zipf", 1.0, 7, 3).request(i)
                                                 for i in range(20)]
    assert all(len(t.request(i)[1].split()) == 7 for i in range(20))
    w = model_weights(3, "zipf", 1.0)
    assert w[0] > w[1] > w[2] and abs(sum(w) - 1) < 1e-9
    assert model_weights(4) == [0.25] * 4


def test_matched_lora_rank_is_closest_to_para():
    from loadtests import adapters as ad

    spec = ad.ModelSpec(1024, 2816, 4, 16, 4)
    # PARA r=12 on q,v,u: 4 * (12*1024 + 4096*12 + 4096)
    para = 262144
    r = ad.matched_lora_rank(spec, para)
    counts = {k: abs(ad.lora_param_count(spec, k, ad.MATCHED_LORA_TARGETS) - para) for k in range(1, 40)}
    assert counts[r] == min(counts.values()) and r == 9
    assert ad.max_lora_rank_flag(r) == 16 and ad.max_lora_rank_flag(8) == 8
    assert ad.lora_param_count(spec, 16, ad.ALL_LINEAR) == 4 * 16 * (2048 + 1280 + 1280 + 2048 + 3 * 3840)


def test_report_targets():
    from loadtests import protocol as P

    def ms(para4):  # 3 rounds; PARA/base 0.97 at c=1; at c=4 `para4`/200; LoRA-16 at 100
        out = []
        for r in range(3):
            for s, c, t in [("base", 1, 100.0), ("para", 1, 97.0), ("lora16", 1, 90.0),
                            ("base", 4, 200.0), ("para", 4, para4), ("lora16", 4, 70.0)]:
                out.append(P.Measurement(r, s, c, {"output_tokens_per_s": t, "ttft_p50": 10.0, "failures": 0,
                                                   "requests": 4}))
        return [v.verdict for v in P.targets(out)]

    assert ms(180.0) == ["PASS", "FAIL", "PASS", "PASS", "PASS"]  # 180/200 = 0.90x base at c=4
    assert ms(196.0) == ["PASS", "PASS", "PASS", "PASS", "PASS"]  # 0.98x base, 2.8x LoRA-16
    assert ms(174.0)[3] == "FAIL"  # 174/70 = 2.49x LoRA-16


def test_phase_seeds_pair_systems_and_separate_phases():
    from loadtests.compare import phase_seed

    seeds = {phase_seed(0, r, lv, w) for r in range(-2, 6) for lv in range(4) for w in (False, True)}
    assert len(seeds) == 8 * 4 * 2  # every (round, level, warm-up) phase has its own prompts
    assert phase_seed(1, 0, 0) != phase_seed(0, 0, 0)


@pytest.mark.server
def test_small_mode_end_to_end(tmp_path):
    """The ABBA protocol for real: one server at a time, in ABBA order, warm-up excluded,
    medians and ratios computed from the per-round measurements."""
    from loadtests import protocol as P

    cmd = [sys.executable, "-m", "loadtests.compare", "--mode", "small", "--systems", ",".join(SYSTEMS),
           "--concurrency", ",".join(map(str, LEVELS)), "--requests", str(REQUESTS), "--rounds", str(ROUNDS),
           "--warmup-requests", "2", "--out-dir", str(tmp_path), "--run-id", "ci", "--startup-timeout", "600",
           "--run-time", "300"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1700)  # pytest.ini: 1800
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "ci"

    # one server at a time, in ABBA order (adjacent slots of one system share a server in small mode)
    servers = _csv(run / "servers.csv")
    assert [s["system"] for s in servers] == ["base", "para", "base", "para"]
    assert [s["rounds"] for s in servers] == ["0", "0 1", "1 2", "2"]
    for before, after in zip(servers, servers[1:]):
        assert float(before["stop_s"]) <= float(after["start_s"]), (before, after)
    for i, s in enumerate(servers):
        assert (run / "logs" / f"{s['system']}_server{i}.log").stat().st_size > 0
    assert "ABBA schedule (4 server starts): base para | para* base | base* para" in proc.stdout

    rounds = _csv(run / "rounds.csv")
    measured = [r for r in rounds if r["warmup"] == "0"]
    warmups = [r for r in rounds if r["warmup"] == "1"]
    slot_order = list(dict.fromkeys((int(r["slot"]), r["system"]) for r in measured))
    assert [s for _, s in slot_order] == ["base", "para", "para", "base", "base", "para"]
    assert len(measured) == ROUNDS * len(SYSTEMS) * len(LEVELS)
    assert len(warmups) == len(servers) * len(LEVELS)  # every fresh server warmed up at every level
    for r in rounds:
        assert int(r["failures"]) == 0 and float(r["output_tokens_per_s"]) > 0, r
    for system in SYSTEMS:
        for c in LEVELS:  # locust ran and wrote its CSVs with our request types in them
            for rd in range(ROUNDS):
                stats = (run / "locust" / f"{system}_r{rd}_c{c}_stats.csv").read_text()
                assert {"completion", "TTFT", "ITL"} <= {line.split(",")[0] for line in stats.splitlines()}

    # medians over measured rounds only; ratios = median of per-round ratios
    tput = {(r["system"], int(r["concurrency"]), int(r["round"])): float(r["output_tokens_per_s"]) for r in measured}
    summary = {(r["system"], int(r["concurrency"])): r for r in _csv(run / "summary.csv")}
    assert set(summary) == {(s, c) for s in SYSTEMS for c in LEVELS}
    for (system, c), row in summary.items():
        per_round = [tput[(system, c, rd)] for rd in range(ROUNDS)]
        assert row["rounds"] == str(ROUNDS) and int(row["failures"]) == 0
        assert float(row["output_tokens_per_s_median"]) == pytest.approx(statistics.median(per_round), abs=2e-3)
        assert float(row["output_tokens_per_s_min"]) == pytest.approx(min(per_round), abs=2e-3)
    ratios = {(r["ratio"], int(r["concurrency"])): r for r in _csv(run / "ratios.csv")}
    for c in LEVELS:
        per_round = [tput[("para", c, rd)] / tput[("base", c, rd)] for rd in range(ROUNDS)]
        row = ratios[("PARA/base output tok/s", c)]
        assert float(row["median"]) == pytest.approx(statistics.median(per_round), rel=1e-3)
        assert (float(row["min"]), float(row["max"])) == pytest.approx((min(per_round), max(per_round)), rel=1e-3)
        assert row["per_round"].count("=") == ROUNDS
        assert ("PARA/base TTFT p50", c) in ratios

    report = (run / "report.md").read_text()
    assert "measured rounds, warm-up excluded | **PASS** | 3 measured round(s)" in report
    assert "zero failed requests (warm-up included) | **PASS**" in report
    assert "PARA/base output tok/s >= 0.97 at every level" in report
    assert "| PARA/base output tok/s | " in report
    for png in ("throughput.png", "ttft_p50.png", "itl_p50.png"):
        assert (run / png).read_bytes()[:8] == PNG_MAGIC


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))
