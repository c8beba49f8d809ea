"""`python -m loadtests.compare` end to end in small mode (real servers + Locust), trimmed for CI."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SYSTEMS = ["base", "para", "lora16"]
LEVELS = [1, 2]
REQUESTS = 4


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
    from loadtests.report import targets

    rows = [{"system": s, "concurrency": c, "output_tokens_per_s": t, "failures": 0, "requests": 4}
            for s, c, t in [("base", 1, 100.0), ("para", 1, 96.0), ("lora16", 1, 90.0),
                            ("base", 4, 200.0), ("para", 4, 180.0), ("lora16", 4, 100.0)]]
    verdicts = [v for _, v, _ in targets(rows)]
    assert verdicts == ["FAIL", "PASS", "PASS"]  # 180/200 = 0.90x base at c=4


@pytest.mark.server
def test_small_mode_end_to_end(tmp_path):
    cmd = [sys.executable, "-m", "loadtests.compare", "--mode", "small", "--systems", ",".join(SYSTEMS),
           "--concurrency", ",".join(map(str, LEVELS)), "--requests", str(REQUESTS),
           "--out-dir", str(tmp_path), "--run-id", "ci", "--startup-timeout", "600", "--run-time", "300"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "ci"
    for system in SYSTEMS:
        assert "healthy after" in proc.stdout and f"[{system}] healthy" in proc.stdout
        assert (run / "logs" / f"{system}_server.log").stat().st_size > 0
        for c in LEVELS:  # locust ran and wrote its CSVs with our request types in them
            stats = (run / "locust" / f"{system}_c{c}_stats.csv").read_text()
            assert {"completion", "TTFT", "ITL"} <= {line.split(",")[0] for line in stats.splitlines()}

    with open(run / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["system"], int(r["concurrency"])) for r in rows] == [(s, c) for s in SYSTEMS for c in LEVELS]
    for r in rows:
        assert int(r["requests"]) == REQUESTS and int(r["failures"]) == 0, r
        assert float(r["output_tokens_per_s"]) > 0 and float(r["requests_per_s"]) > 0, r
        assert float(r["ttft_p50"]) > 0 and float(r["itl_p99"]) >= 0, r

    report = (run / "report.md").read_text()
    assert "PARA/LoRA-16" in report and "zero failed requests | **PASS**" in report
    for png in ("throughput.png", "ttft_p50.png", "itl_p50.png"):
        assert (run / png).read_bytes()[:8] == PNG_MAGIC
