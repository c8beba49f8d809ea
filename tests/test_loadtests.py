"""`python -m bench.compare` end to end in small mode (real servers + Locust, ABBA protocol), trimmed
for CI, plus quick unit tests of the traffic generator, the matched-rank solver and the target verdicts.
The protocol's logic itself is unit-tested in tests/test_bench_protocol.py."""

from __future__ import annotations

import csv
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SYSTEMS = ["base", "para"]
LEVELS = [2]  # one level keeps the CI run short; the protocol is the same at every level
REQUESTS = 4
ROUNDS = 3


def test_traffic_is_seeded_and_follows_the_distribution():
    from bench.traffic import Traffic, model_weights

    t = Traffic(("a", "b", "c"), "zipf", 1.0, prompt_words=7, seed=3)
    assert [t.request(i) for i in range(20)] == [Traffic(("a", "b", "c"), "zipf", 1.0, 7, 3).request(i)
                                                 for i in range(20)]
    assert all(len(t.request(i)[1].split()) == 7 for i in range(20))
    w = model_weights(3, "zipf", 1.0)
    assert w[0] > w[1] > w[2] and abs(sum(w) - 1) < 1e-9
    assert model_weights(4) == [0.25] * 4


def test_matched_lora_rank_is_closest_to_para():
    from bench import adapters as ad

    spec = ad.ModelSpec(1024, 2816, 4, 16, 4)
    # PARA r=12 on q,v,u: 4 * (12*1024 + 4096*12 + 4096)
    para = 262144
    r = ad.matched_lora_rank(spec, para)
    counts = {k: abs(ad.lora_param_count(spec, k, ad.MATCHED_LORA_TARGETS) - para) for k in range(1, 40)}
    assert counts[r] == min(counts.values()) and r == 9
    assert ad.max_lora_rank_flag(r) == 16 and ad.max_lora_rank_flag(8) == 8
    assert ad.lora_param_count(spec, 16, ad.ALL_LINEAR) == 4 * 16 * (2048 + 1280 + 1280 + 2048 + 3 * 3840)


def test_report_targets():
    from bench import protocol as P

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
    from bench.compare import phase_seed

    seeds = {phase_seed(0, r, lv, w) for r in range(-2, 6) for lv in range(4) for w in (False, True)}
    assert len(seeds) == 8 * 4 * 2  # every (round, level, warm-up) phase has its own prompts
    assert phase_seed(1, 0, 0) != phase_seed(0, 0, 0)


def test_requests_per_user_lengthens_high_concurrency_phases():
    from bench.compare import Plan, parse_args

    plain = Plan.from_args(parse_args(["--mode", "full"]))
    assert [plain.load(c, ("m",), 0).total_requests for c in plain.levels] == [48, 48, 48]
    plan = Plan.from_args(parse_args(["--mode", "full", "--requests-per-user", "32"]))
    assert [plan.load(c, ("m",), 0).total_requests for c in plan.levels] == [48, 128, 512]
    assert plan.load(16, ("m",), 0, warmup=True, requests=16).total_requests == 16  # warm-up keeps its own size
    assert plan.meta([])["requests per concurrency level"] == "c=1: 48, c=4: 128, c=16: 512"


def test_server_env_reaches_every_server_and_the_report():
    from bench.compare import Plan, parse_args

    plan = Plan.from_args(parse_args(["--mode", "full", "--server-env", "THP_MEM_ALLOC_ENABLE=1",
                                      "--server-env", "OMP_WAIT_POLICY=passive"]))
    assert dict(plan.server_env) == {"THP_MEM_ALLOC_ENABLE": "1", "OMP_WAIT_POLICY": "passive"}
    assert plan.meta([])["engine flags (all systems)"].endswith(
        "`, VLLM_CPU_KVCACHE_SPACE=1, THP_MEM_ALLOC_ENABLE=1, OMP_WAIT_POLICY=passive")
    assert Plan.from_args(parse_args(["--mode", "full"])).server_env == ()
    for bad in ("THP_MEM_ALLOC_ENABLE", "1X=2", "=1"):
        with pytest.raises(SystemExit):
            parse_args(["--server-env", bad])
    with pytest.raises(SystemExit):  # not silently ignored where it is not supported
        parse_args(["--scenario", "fleet", "--server-env", "THP_MEM_ALLOC_ENABLE=1"])


@pytest.mark.server
@pytest.mark.slow  # 3.6 min: a whole small ABBA load test; `make test` stays under 25 minutes without it
def test_small_mode_end_to_end(tmp_path):
    """The ABBA protocol for real: one server at a time, in ABBA order, warm-up excluded,
    medians and ratios computed from the per-round measurements."""

    cmd = [sys.executable, "-m", "bench.compare", "--mode", "small", "--systems", ",".join(SYSTEMS),
           "--concurrency", ",".join(map(str, LEVELS)), "--requests", str(REQUESTS), "--rounds", str(ROUNDS),
           "--warmup-requests", "2", "--out-dir", str(tmp_path), "--run-id", "ci", "--startup-timeout", "600",
           "--run-time", "300", "--enforce-eager"]  # checks the protocol, not speed: skip torch.compile
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
    for r in measured:  # vLLM's own histograms, scraped around each phase; CPU of the server's processes
        assert float(r["engine_tpot_ms"]) > 0 and float(r["engine_prefill_ms"]) > 0, r
        assert float(r["cpu_api_ms_per_tok"]) > 0 and float(r["cpu_worker_ms_per_tok"]) > 0, r
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
        assert ("PARA/base engine TPOT (mean)", c) in ratios
        assert ("PARA/base API-server CPU per token", c) in ratios

    report = (run / "report.md").read_text()
    assert "| system | concurrency | API server | engine core | worker |" in report
    assert "measured rounds, warm-up excluded | **PASS** | 3 measured round(s)" in report
    assert "zero failed requests (warm-up included) | **PASS**" in report
    assert "PARA/base output tok/s >= 0.97 at every level" in report
    assert "| PARA/base output tok/s | " in report
    for png in ("throughput.png", "ttft_p50.png", "itl_p50.png"):
        assert (run / png).read_bytes()[:8] == PNG_MAGIC


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ fleet scenario (bench/fleet.py)
def test_fleet_arguments_and_defaults():
    from bench.compare import SYSTEMS, Plan, parse_args
    from bench.fleet_plan import FleetPlan

    args = parse_args(["--scenario", "fleet"])
    assert (args.mode, args.systems, args.fleet_adapters) == ("full", ["para", "lora"], 1000)
    plan = FleetPlan.from_args(args)
    assert (plan.levels, plan.zipf_exponent, plan.host_cache, plan.device_slots) == ((4, 16), 1.1, 64, 8)
    assert plan.names[0] == "tenant-0000" and len(plan.names) == 1000
    spec = plan.load(16, 0)
    assert spec.distribution == "zipf" and spec.models == plan.names and spec.concurrency == 16
    assert plan.load(4, 0, warmup=True).models == ("warmup",)  # warm-up never loads a tenant
    mixed = parse_args([])  # the mixed scenario keeps its defaults
    assert (mixed.mode, mixed.systems, Plan.from_args(mixed).zipf_exponent) == ("small", list(SYSTEMS), 1.0)
    with pytest.raises(SystemExit):
        parse_args(["--scenario", "fleet", "--systems", "base"])


def test_fleet_ia3_kind(tmp_path):
    """--adapter-kind ia3: the plugin's fleet is PEFT (IA)^3 directories, written by PEFT, that the
    plugin's loader reads as (IA)^3 (no engine here; serving them is tests/test_ia3_engine.py)."""
    from bench import adapters as ad
    from bench.compare import parse_args
    from bench.fleet_plan import FleetPlan
    from vllm_para.adapter import read_adapter_files
    from testkit.tiny_models import build_tiny_model

    assert FleetPlan.from_args(parse_args(["--scenario", "fleet", "--adapter-kind", "ia3"])).adapter_kind == "ia3"
    base = build_tiny_model(tmp_path / "base", arch="llama")
    params = ad.build_ia3_fleet(base, tmp_path / "fleet", ["tenant-0000", "tenant-0001"])
    files = [read_adapter_files(tmp_path / "fleet" / n) for n in ("tenant-0000", "tenant-0001")]
    assert [f.kind for f in files] == ["ia3", "ia3"] and files[0].digest != files[1].digest
    assert params > 0


def test_fleet_cold_and_warm_requests():
    from bench.fleet import ColdTracker

    t = ColdTracker()
    phase1 = [  # a: first at 0.0, first token at 0.5; the second request for a was sent while it loaded
        {"model": "a", "start": 0.0, "ttft": 0.5, "end": 1.0, "error": None},
        {"model": "a", "start": 0.2, "ttft": 0.4, "end": 1.0, "error": None},
        {"model": "a", "start": 0.6, "ttft": 0.1, "end": 1.0, "error": None},
        {"model": "b", "start": 0.1, "ttft": None, "end": 0.3, "error": "HTTP 500"},  # failed: ready at its end
        {"model": "b", "start": 0.4, "ttft": 0.1, "end": 1.0, "error": None},
    ]
    cold, warm = t.split(phase1)
    assert [(r["model"], r["start"]) for r in cold] == [("a", 0.0), ("b", 0.1), ("a", 0.2)]
    assert [(r["model"], r["start"]) for r in warm] == [("b", 0.4), ("a", 0.6)]
    cold, warm = t.split([{"model": "a", "start": 2.0, "ttft": 0.1, "end": 3.0, "error": None},
                          {"model": "c", "start": 2.1, "ttft": 0.1, "end": 3.0, "error": None}])
    assert [r["model"] for r in cold] == ["c"] and [r["model"] for r in warm] == ["a"]  # state spans phases
    assert t.distinct == 3


def test_lora_memory_formulas_match_vllm():
    """Numbers read from a real vLLM-CPU 0.32 engine (tiny Llama: hidden 128, intermediate 256, 2 layers,
    2 heads / 1 KV head, vocab 512; --max-loras 8 --max-lora-rank 8): its `lora_a/b_stacked` tensors
    (embedding 163840 + qkv 327680 + o/down 327680 + gate_up 393216 + logits 163840 bytes) and one CPU-cached
    rank-3 LoRA on q,v,up (19968 bytes)."""
    from bench import adapters as ad

    spec = ad.ModelSpec(128, 256, 2, 2, 1)
    assert 8 * ad.lora_slot_bytes(spec, 512, 8, 4) == 1376256
    assert 4 * ad.lora_param_count(spec, 3, ad.MATCHED_LORA_TARGETS) == 19968


def test_fleet_memory_and_metrics_parsing():
    from bench import protocol as P
    from bench.fleet import memory_of
    from bench.fleet_plan import BUDGET_BYTES, FleetSystem
    from bench.fleet_report import memory_rows
    from bench.prometheus import samples as parse_metrics

    text = ("# HELP x\nvllm_para:adapter_host_bytes 1000.0\nvllm_para:adapters_in_host_memory 4.0\n"
            'vllm_para:adapter_slot_bytes 800.0\nvllm_para:adapter_cache_total{result="miss"} 5.0\n'
            "vllm_para:adapter_cold_load_seconds_sum 0.5\nvllm_para:adapter_cold_load_seconds_count 5.0\n")
    metrics = parse_metrics(text)
    assert metrics['vllm_para:adapter_cache_total{result="miss"}'] == 5.0

    class _Plan:
        host_cache, device_slots = 64, 8

    para = memory_of(FleetSystem("para", [], {}, 10, "p"), _Plan, metrics, distinct=3)
    assert (para["host_bytes_per_adapter"], para["device_bytes_per_slot"], para["mean_load_s"]) == (250, 100, 0.1)
    lora_fs = FleetSystem("lora", [], {}, 10, "l", host_bytes_per_adapter=40, device_bytes_per_slot=300)
    lora = memory_of(lora_fs, _Plan, {}, distinct=100)
    assert (lora["adapters_in_host_memory"], lora["adapter_host_bytes"], lora["adapter_device_bytes"]) == (
        64, 64 * 40, 8 * 300)  # vLLM's CPU LoRA cache holds at most --max-cpu-loras
    ms = [P.Measurement(0, "para", 4, para), P.Measurement(0, "lora", 4, lora)]
    rows = {r["system"]: r for r in memory_rows(ms, {"para": FleetSystem("para", [], {}, 10, "p"),
                                                     "lora": lora_fs}, _Plan)}
    assert rows["para"]["adapters_in_2gib_host"] == BUDGET_BYTES // 250
    assert rows["lora"]["adapter_slots_in_2gib_device"] == BUDGET_BYTES // 300


FLEET_ADAPTERS = 20


@pytest.mark.server
@pytest.mark.slow  # `make test-slow`: first-use loading and the host cache are covered in CI by test_hostile_server
def test_fleet_small_mode_end_to_end(tmp_path):
    """`--scenario fleet` for real, trimmed for CI: 20 adapters per system loaded on first use (PARA from
    --para-adapter-dir, LoRA through vLLM's filesystem resolver), Zipf traffic at c=4 and 16, one round."""
    cmd = [sys.executable, "-m", "bench.compare", "--scenario", "fleet", "--mode", "small", "--fleet-adapters",
           str(FLEET_ADAPTERS), "--requests", "8", "--rounds", "1", "--out-dir", str(tmp_path), "--run-id", "ci",
           "--startup-timeout", "600", "--run-time", "300", "--enforce-eager"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1700)  # pytest.ini: 1800
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "ci"
    assert sorted(p.name for p in run.iterdir()) == ["fleet.png", "memory.csv", "report.md", "rounds.csv",
                                                     "servers.csv", "summary.csv"]  # no raw logs
    servers = _csv(run / "servers.csv")
    assert [s["system"] for s in servers] == ["para", "lora"]
    assert float(servers[0]["stop_s"]) <= float(servers[1]["start_s"])  # one server at a time

    summary = {(r["system"], int(r["concurrency"])): r for r in _csv(run / "summary.csv")}
    assert set(summary) == {(s, c) for s in ("para", "lora") for c in (4, 16)}
    for (_system, _c), row in summary.items():
        assert int(row["failures"]) == 0 and float(row["output_tokens_per_s_median"]) > 0, row
        assert int(row["cold_requests"]) + int(row["warm_requests"]) == int(row["requests"]) == 8
    for system in ("para", "lora"):
        assert int(summary[(system, 4)]["cold_requests"]) >= 1  # every server starts with no tenant loaded
    for c in (4, 16):  # identical traffic on both systems: the same tenants by the end of each level
        assert summary[("para", c)]["distinct_adapters_median"] == summary[("lora", c)]["distinct_adapters_median"]
    assert summary[("para", 4)]["para_over_lora_tok_s_median"] != ""

    measured = [r for r in _csv(run / "rounds.csv") if r["warmup"] == "0"]
    para_last = [r for r in measured if r["system"] == "para"][-1]
    # nothing evicted (20 < 64): every tenant used, plus the warm-up adapter, is in PARA's host memory
    assert int(para_last["adapters_in_host_memory"]) == int(para_last["distinct_adapters"]) + 1
    assert float(para_last["cache_misses"]) == int(para_last["distinct_adapters"]) + 1

    memory = {r["system"]: r for r in _csv(run / "memory.csv")}
    assert memory["para"]["source"] == "/metrics" and memory["lora"]["source"] == "computed"
    for row in memory.values():
        per_adapter = float(row["host_bytes_per_adapter"])
        assert per_adapter > 0 and int(row["adapters_in_2gib_host"]) == 2 * 1024**3 // math.ceil(per_adapter)
    assert float(memory["lora"]["host_bytes_per_adapter"]) == 4 * int(memory["lora"]["trainable_params"])

    report = (run / "report.md").read_text()
    for text in ("## Throughput and time to first token", "## Adapter memory and adapters per 2 GiB",
                 "zero failed requests (warm-up included) | **PASS**", "PARA host cache bound", "`para lora`",
                 "VLLM_LORA_RESOLVER_CACHE_DIR=DIR", "--para-adapter-dir DIR --max-cpu-para-adapters 64"):
        assert text in report, text
    assert (run / "fleet.png").read_bytes()[:8] == PNG_MAGIC


# ------------------------------------------------------------------ mixed scenario (bench/mixed_itl.py)
def test_mixed_itl_percentile_and_report(tmp_path):
    """The base-ITL comparison's arithmetic: the package's one percentile, medians of per-round
    PARA/plain ratios, and the 10% verdict (the servers themselves: `python -m bench.mixed_itl`)."""
    from bench import mixed_itl as M
    from bench import protocol as P

    assert M.percentile is P.percentile
    assert abs(M.percentile(list(range(1, 101)), 99) - 99.01) < 1e-9 and M.percentile([3.0], 99) == 3.0
    assert M.percentile([5, 1, 3], 50) == 3 and M.percentile([5, 1, 3], 100) == 5
    args = M.parse_args(["--mode", "small", "--rounds", "3", "--streams", "2"])
    ms = []
    for rnd, (plain, para) in enumerate([(10.0, 10.5), (12.0, 11.0), (10.0, 12.5)]):
        for system, p99 in (("plain", plain), ("para", para)):
            ms.append(P.Measurement(rnd, system, 2, {"itl_p50_ms": 5.0, "itl_p99_ms": p99, "itl_max_ms": 20.0,
                                                     "decode_tok_s": 100.0, "gaps": 50, "injected": 4}))
    M.write_results(tmp_path, ms, args)
    report = (tmp_path / "report.md").read_text()
    # per-round ratios 1.05, 0.917, 1.25: median 1.05 <= 1.10
    assert "| PARA/plain base ITL p99 <= 1.10 (median of per-round ratios) | **PASS** | 1.050 [0.917-1.250] |" in report
    assert len(_csv(tmp_path / "rounds.csv")) == 6
    ms[-1] = P.Measurement(2, "para", 2, {**ms[-1].metrics, "itl_p99_ms": 13.0})
    ms[2] = P.Measurement(1, "plain", 2, {**ms[2].metrics, "itl_p99_ms": 9.0})
    M.write_results(tmp_path, ms, args)
    assert "**FAIL** | 1.222" in (tmp_path / "report.md").read_text()


def test_mixed_itl_gaps_and_in_process_scenario():
    """Gap statistics shared by the served and the in-engine mixed scenario, and the in-engine
    scenario's work: the same token ids for both engines of a round, new ones every round."""
    import importlib.util

    from bench import mixed_itl as M

    m = M.gap_metrics([[0.010, 0.012, 0.300], [0.011]], elapsed=1.0)
    assert m["gaps"] == 4 and m["itl_max_ms"] == pytest.approx(300.0)
    assert m["itl_p99_ms"] == pytest.approx(12 + 0.97 * 288)  # bench.protocol.percentile: interpolated
    assert m["itl_p50_ms"] == pytest.approx(11.5) and m["decode_tok_s"] == pytest.approx(6.0)
    with pytest.raises(RuntimeError, match="no inter-token gap"):
        M.gap_metrics([[], []], elapsed=1.0)
    spec = importlib.util.spec_from_file_location("mixed_itl_step", ROOT / "bench" / "mixed_itl_step.py")
    S = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(S)
    args = S.parse_args(["--streams", "3", "--long-prompts", "2", "--long-tokens", "40", "--para-tokens", "9"])
    streams, jobs = S.scenario(5, args, vocab=300)
    assert [len(s) for s in streams] == [args.stream_tokens] * 3
    assert [(len(ids), para) for ids, para in jobs] == [(40, False), (9, True), (40, False), (9, True)]
    assert all(10 <= t < 300 for ids, _ in jobs for t in ids)
    assert S.scenario(5, args, 300) == (streams, jobs) and S.scenario(6, args, 300) != (streams, jobs)


def test_engine_metrics_from_two_scrapes():
    """Engine-side phase timings are deltas of vLLM's histograms between two /metrics scrapes,
    summed over label sets (e.g. one series per engine or model name)."""
    from bench import prometheus as EM

    def text(queue, prefill, decode, n, tokens):
        lines = []
        for name, total in (("request_queue_time_seconds", queue), ("request_prefill_time_seconds", prefill),
                            ("request_decode_time_seconds", decode)):
            lines.append(f"# TYPE vllm:{name} histogram")
            for engine in ("0", "1"):  # two label sets: each carries half
                lines += [f'vllm:{name}_bucket{{engine="{engine}",le="+Inf"}} {n / 2}',
                          f'vllm:{name}_count{{engine="{engine}"}} {n / 2}',
                          f'vllm:{name}_sum{{engine="{engine}"}} {total / 2}']
        lines.append("# TYPE vllm:generation_tokens_total counter")  # as prometheus_client writes counters
        lines += [f'vllm:generation_tokens_total{{engine="{e}"}} {tokens / 2}' for e in ("0", "1")]
        return "\n".join(lines) + "\n"

    before = EM.totals(text(queue=1.0, prefill=2.0, decode=10.0, n=4, tokens=400))
    after = EM.totals(text(queue=1.4, prefill=2.8, decode=16.3, n=8, tokens=656))
    got = EM.phase_metrics(before, after)
    assert got["engine_queue_ms"] == pytest.approx(100.0)  # 0.4 s over 4 requests
    assert got["engine_prefill_ms"] == pytest.approx(200.0)
    assert got["engine_tpot_ms"] == pytest.approx(25.0)  # 6.3 s over 256 - 4 tokens after each first
    assert EM.phase_metrics(after, after) == {"engine_queue_ms": None, "engine_prefill_ms": None,
                                              "engine_tpot_ms": None}
    assert EM.scrape("http://127.0.0.1:9") == {}  # nothing listening: no numbers, no exception


def test_process_cpu_by_role_per_token():
    """CPU seconds per role between two readings of a process tree, per generated token."""
    import os
    import subprocess
    import sys

    from bench import process_cpu as PC

    assert PC.role_of("vllm", True) == "api"
    assert PC.role_of("VLLM::EngineCore_DP0", False) == "engine_core"
    assert PC.role_of("VLLM::Worker_TP0", False) == "worker"
    before = {10: ("api", 1.0), 11: ("engine_core", 5.0), 12: ("worker", 7.0)}
    after = {10: ("api", 1.2), 11: ("engine_core", 6.0), 12: ("worker", 9.0), 13: ("worker", 0.5)}  # 13: new
    got = PC.phase_cpu(before, after, tokens=1000)
    assert got == pytest.approx({"cpu_api_ms_per_tok": 0.2, "cpu_engine_core_ms_per_tok": 1.0,
                                 "cpu_worker_ms_per_tok": 2.5})
    assert PC.phase_cpu(before, after, tokens=0) == dict.fromkeys(PC.METRICS)
    assert PC.phase_cpu({}, after, tokens=10) == dict.fromkeys(PC.METRICS)

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:  # a real tree: this process (the root) and its child
        snap = PC.snapshot(os.getpid())
        assert snap[os.getpid()][0] == "api" and snap[child.pid][0] == "worker"
        assert all(seconds >= 0 for _, seconds in snap.values())
    finally:
        child.kill()
        child.wait()
    assert PC.snapshot(None) == {} and PC.snapshot(2 ** 22 + 12345) == {}  # no such process: empty, no exception


def test_pool_runs_pools_rounds_of_one_protocol_and_refuses_mixed_runs(tmp_path):
    """Real committed reports: a run pooled with itself keeps its median and doubles its rounds;
    runs of two dtypes (or other request counts) are refused; hand-made runs pool exactly."""
    from bench import pool_runs

    results = Path(__file__).resolve().parents[1] / "bench" / "results"
    f32 = pool_runs.read_run(results / "abba-full-float32-long-4r-20261130")
    bf16 = pool_runs.read_run(results / "abba-full-bfloat16-long-4r-20261130")
    assert f32.settings["dtype"] == "float32" and f32.settings["mode"] == "full"
    rows = {(r["ratio"], r["concurrency"]): r for r in pool_runs.pool([f32, f32])}
    tok4 = rows[("PARA/base output tok/s", 4)]
    assert tok4["rounds"] == 8 and abs(tok4["median"] - 0.964) < 5e-4 and tok4["per_run"][0] == tok4["per_run"][1]
    with pytest.raises(pool_runs.IncompatibleRuns, match="dtype"):
        pool_runs.pool([f32, bf16])

    def fake(name, tok_ratios, requests=8, env="VLLM_CPU_KVCACHE_SPACE=1"):
        run = tmp_path / name
        run.mkdir()
        (run / "report.md").write_text("# Load test (small mode, ABBA protocol)\n"
                                       f"- engine flags (all systems): `--dtype float32`, {env}\n## Systems\n")
        with (run / "rounds.csv").open("w") as f:
            f.write("slot,round,warmup,system,concurrency,requests\n")
            for i, system in enumerate(("base", "para")):
                f.write(f"{i},0,0,{system},4,{requests}\n")
        per_round = ";".join(f"r{i}={v}" for i, v in enumerate(tok_ratios))
        (run / "ratios.csv").write_text("ratio,concurrency,median,min,max,per_round\n"
                                        f"PARA/base output tok/s,4,0,0,0,{per_round}\n")
        return pool_runs.read_run(run)

    a, b = fake("a", [0.90, 1.00, 0.95]), fake("b", [0.99, 0.97, 1.04])
    (row,) = pool_runs.pool([a, b])
    assert row["rounds"] == 6 and row["median"] == statistics.median([0.90, 1.00, 0.95, 0.99, 0.97, 1.04])
    assert (row["min"], row["max"]) == (0.90, 1.04) and row["per_run"] == [0.95, 0.99]
    with pytest.raises(pool_runs.IncompatibleRuns, match="requests per level"):
        pool_runs.pool([a, fake("c", [1.0], requests=16)])
    with pytest.raises(pool_runs.IncompatibleRuns, match="server environment"):
        pool_runs.pool([a, fake("d", [1.0], env="VLLM_CPU_KVCACHE_SPACE=1, THP_MEM_ALLOC_ENABLE=1")])
    assert f32.settings["server environment"] == "VLLM_CPU_KVCACHE_SPACE=1"
    assert (row["interval"].lo, row["interval"].hi) == (0.90, 1.04)  # 6 rounds: [min, max], 97%
    assert ("| PARA/base output tok/s | 4 | **0.980** [0.900-1.040] | 0.900-1.040 (97%) | 6 |"
            in pool_runs.markdown([a, b], [row]))
    # The committed float32 runs C and D: 8 rounds, the median's 93% interval [x_(2), x_(7)].
    d = pool_runs.read_run(results / "abba-full-float32-long-4r-d-20261130")
    tok = {r["concurrency"]: r for r in pool_runs.pool([f32, d]) if r["ratio"] == "PARA/base output tok/s"}
    assert tok[4]["interval"].coverage == pytest.approx(0.9297, abs=1e-4)
    assert tok[4]["interval"].lo < 0.97 < tok[4]["interval"].hi  # the c=4 median, 0.964, is not established below 0.97


PERF_REPORT = """\
# Samples: 81K of event 'cpu-clock:ppp'
# Overhead       Samples  Command          Shared Object
# ........  ............  ...............  ..........................
#
    31.41%         25516  VLLM::Worker     [JIT] tid 6563
    26.20%         21283  VLLM::EngineCor  libpython3.11.so.1.0
     6.33%          5145  VLLM::Worker     libpython3.11.so.1.0
     4.19%          3402  swapper          [kernel.kallsyms]
     2.44%          1979  VLLM::Worker     _C.abi3.so
     2.19%          1775  vllm             libpython3.11.so.1.0
     1.47%          1194  VLLM::Worker     libtorch_cpu.so
     0.26%           215  VLLM::Worker     libc10.so
     0.05%            41  VLLM::Worker     chv2p2ofnpukdzbhq7ungvfmkmbzq2etj3axrbubdfrpifkzhojl.main.so
     0.04%            30  VLLM::Worker     cjmc7eecna2o7zrf3n4oeccku4toc5gw4luj3xxfwm57qpdtum7e.main.so
     0.50%           400  gloo_tcp_loop    [kernel.kallsyms]
     0.59%           482  VLLM::Worker     libc.so.6
"""


def test_served_profile_attributes_perf_samples_by_process_and_code():
    """`perf report --sort comm,dso` text (real lines from a served run) -> samples by process and
    kind of code -> CPU ms per 1,000 tokens -> per-system medians and the report's tables."""
    from bench import served_profile as SP

    samples = SP.parse_report(PERF_REPORT)
    assert samples == {
        ("worker", "oneDNN JIT GEMM"): 25516, ("engine core", "Python interpreter"): 21283,
        ("worker", "Python interpreter"): 5145, ("idle", "OS kernel"): 3402, ("worker", "vLLM CPU kernels"): 1979,
        ("API server", "Python interpreter"): 1775, ("worker", "PyTorch runtime"): 1194 + 215,
        ("worker", "Inductor kernels"): 71, ("other", "OS kernel"): 400, ("worker", "other"): 482,
    }
    ms = SP.per_k_tokens({("worker", "other"): 1000}, frequency=1000, tokens=500)
    assert ms == {("worker", "other"): 2000.0}  # 1 s of CPU over 500 tokens = 2,000 ms per 1,000 tokens

    def row(server, system, code, v):
        return {"server": server, "system": system, "tok_s": 200.0, "process": "worker", "code": code,
                "ms_per_1k_tokens": v}

    rows = [row(0, "para", "Python interpreter", 10.0), row(1, "base", "Python interpreter", 9.0),
            row(2, "base", "Python interpreter", 11.0), row(3, "para", "Python interpreter", 14.0),
            row(3, "para", "Inductor kernels", 2.0)]  # server 0 has no Inductor samples: it counts as 0
    med = SP.summarize_servers(rows)
    assert (med["para"][("worker", "Python interpreter")] == 12.0
            and med["base"][("worker", "Python interpreter")] == 10.0)
    assert med["para"][("worker", "Inductor kernels")] == 1.0
    text = SP.markdown({"dtype": "float32", "label": None}, rows)
    assert "| Python interpreter | 12.0 | 10.0 | +2.0 | 1.200 |" in text
    assert "| worker | 13 | 10 | +3 | 1.300 |" in text
