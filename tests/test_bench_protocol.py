"""The ABBA measurement protocol (bench/protocol.py), the offline benchmark's orchestration
and the GPU decode-step benchmark's math: fast, no vLLM engine, no server."""

from __future__ import annotations

import importlib.util
import math
import statistics
import sys
from pathlib import Path

import pytest

from bench import protocol as P

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- ordering


def test_abba_order_alternates_every_round():
    slots = P.schedule(["base", "para"], rounds=4)
    assert [s.system for s in slots] == ["base", "para", "para", "base"] * 2
    assert [s.round for s in slots] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(s.fresh for s in slots) and not any(s.warmup for s in slots)
    assert [s.index for s in slots] == list(range(8))
    # more systems: a palindrome per pair of rounds
    slots = P.schedule(["a", "b", "c"], rounds=3)
    assert [s.system for s in slots] == list("abccbaabc")


def test_every_system_is_measured_equally_often_in_each_position():
    for n in (2, 3, 4):
        systems = [f"s{i}" for i in range(n)]
        slots = P.schedule(systems, rounds=4)
        for system in systems:  # mean position within a round is the same for every system
            positions = [s.index % n for s in slots if s.system == system]
            assert sum(positions) == sum(range(n)) * 4 / n, (system, positions)


def test_warmup_rounds_come_first_and_are_flagged():
    slots = P.schedule(["base", "para"], rounds=3, warmup_rounds=1)
    assert [(s.round, s.system) for s in slots] == [(-1, "para"), (-1, "base"), (0, "base"), (0, "para"),
                                                    (1, "para"), (1, "base"), (2, "base"), (2, "para")]
    assert [s.warmup for s in slots] == [True, True] + [False] * 6
    assert P.order_string(slots) == "[warm-up: para base] | base para | para base | base para"


def test_adjacent_reuse_groups_slots_into_server_lives():
    slots = P.schedule(["base", "para"], rounds=4, reuse=True)
    assert [s.fresh for s in slots] == [True, True, False, True, False, True, False, True]
    lives = P.lives(slots)
    assert [[(s.round, s.system) for s in life] for life in lives] == [
        [(0, "base")], [(0, "para"), (1, "para")], [(1, "base"), (2, "base")], [(2, "para"), (3, "para")],
        [(3, "base")]]
    assert P.order_string(slots) == "base para | para* base | base* para | para* base"
    # reuse is balanced over the measured rounds when their number is odd, or even after a warm-up round
    for rounds, warmup in ((3, 0), (5, 0), (4, 1)):
        measured = [s for s in P.schedule(["base", "para"], rounds, warmup, reuse=True) if not s.warmup]
        reused = {x: sum(not s.fresh for s in measured if s.system == x) for x in ("base", "para")}
        assert reused["base"] == reused["para"] > 0, (rounds, warmup, reused)
    measured = P.schedule(["base", "para"], 4, reuse=True)
    assert sum(not s.fresh for s in measured if s.system == "para") == 2  # even, no warm-up: off by one
    assert sum(not s.fresh for s in measured if s.system == "base") == 1
    # ... and without reuse every slot is its own life
    assert len(P.lives(P.schedule(["base", "para"], rounds=4))) == 8
    # a life never mixes systems
    bad = [P.Slot(0, 0, "a", True), P.Slot(1, 0, "b", False)]
    with pytest.raises(ValueError):
        P.lives(bad)


def test_schedule_rejects_nonsense():
    with pytest.raises(ValueError):
        P.schedule(["a", "a"], 3)
    with pytest.raises(ValueError):
        P.schedule(["a"], 0)
    with pytest.raises(ValueError):
        P.schedule([], 3)


# ---------------------------------------------------------------- statistics


def _ms(table, warmups=()):
    """table: {(round, system, level): (tok/s, ttft)} -> Measurements (+ warm-up ones)."""
    out = [P.Measurement(r, s, lv, {"output_tokens_per_s": t, "ttft_p50": f, "failures": 0, "requests": 4})
           for (r, s, lv), (t, f) in table.items()]
    out += [P.Measurement(r, s, lv, {"output_tokens_per_s": t, "ttft_p50": f, "failures": 0, "requests": 4},
                          warmup=True) for (r, s, lv), (t, f) in warmups]
    return out


def test_ratios_are_medians_of_per_round_ratios_not_ratios_of_medians():
    # drift: round 1 runs on a machine twice as fast, round 2 in between
    table = {(0, "base", 1): (100.0, 10.0), (0, "para", 1): (99.0, 10.2),
             (1, "base", 1): (200.0, 5.0), (1, "para", 1): (190.0, 5.5),
             (2, "base", 1): (150.0, 8.0), (2, "para", 1): (153.0, 8.0)}
    ms = _ms(table)
    ratios = P.ratio_spreads(ms, "para", "base", "output_tokens_per_s")[1]
    per_round = [99 / 100, 190 / 200, 153 / 150]
    assert ratios.values == tuple(per_round)
    assert ratios.median == statistics.median(per_round) == 0.99
    assert (ratios.lo, ratios.hi) == (0.95, 1.02)
    medians = P.per_system(ms, "output_tokens_per_s")
    assert medians[("base", 1)].median == 150.0 and medians[("para", 1)].median == 153.0
    assert ratios.median != medians[("para", 1)].median / medians[("base", 1)].median  # 1.02: not what we report
    assert (medians[("para", 1)].lo, medians[("para", 1)].hi) == (99.0, 190.0)
    ttft = P.ratio_spreads(ms, "para", "base", "ttft_p50")[1]
    assert ttft.median == pytest.approx(1.02) and ttft.hi == pytest.approx(1.1)


def test_warmup_measurements_never_enter_a_statistic():
    table = {(r, s, 1): (100.0, 10.0) for r in range(3) for s in ("base", "para")}
    warm = [((0, "para", 1), (1.0, 999.0)), ((-1, "base", 1), (1e6, 0.001))]
    ms = _ms(table, warm)
    assert P.per_system(ms, "output_tokens_per_s")[("para", 1)].values == (100.0, 100.0, 100.0)
    assert P.ratio_spreads(ms, "para", "base", "output_tokens_per_s")[1].values == (1.0, 1.0, 1.0)
    assert P.rounds_of(ms) == [0, 1, 2]
    assert len(P.measured(ms)) == 6
    # a warm-up *round* (negative) is excluded even when not flagged
    ms.append(P.Measurement(-1, "para", 1, {"output_tokens_per_s": 5.0}))
    assert P.per_system(ms, "output_tokens_per_s")[("para", 1)].values == (100.0, 100.0, 100.0)


def test_rounds_missing_a_system_or_a_value_give_no_ratio():
    table = {(0, "base", 1): (100.0, None), (0, "para", 1): (97.0, 10.0), (1, "para", 1): (50.0, 5.0),
             (2, "base", 1): (0.0, 1.0), (2, "para", 1): (10.0, 1.0)}
    ms = _ms(table)
    assert P.round_ratios(ms, "para", "base", "output_tokens_per_s") == {1: [(0, 0.97)]}
    assert P.round_ratios(ms, "para", "base", "ttft_p50") == {1: [(2, 1.0)]}
    assert P.spread([]) is None and P.spread([None]) is None


def _verdicts(ms):
    return {v.target.split(" ")[0] + " " + v.target.split(" ")[1]: v.verdict for v in P.targets(ms)}


def test_median_interval_is_order_statistics_with_exact_binomial_coverage():
    # 8 rounds: [x_(2), x_(7)] covers the median with 1 - 2 * (1 + 8) / 256 = 93.0%; [x_(3), x_(6)] only 71%.
    ci = P.median_interval([0.99, 0.80, 1.01, 0.95, 0.97, 0.96, 0.94, 0.96])
    assert (ci.lo, ci.hi) == (0.94, 0.99) and ci.coverage == pytest.approx(1 - 18 / 256)
    assert ci.side_of(0.97) == "straddles" and ci.side_of(0.90) == "above" and ci.side_of(1.0) == "below"
    # 4 rounds cannot reach 90%: [min, max] with its 87.5%; asking for less narrows it when n allows.
    four = P.median_interval([3.0, 1.0, 4.0, 2.0])
    assert (four.lo, four.hi, four.coverage) == (1.0, 4.0, 0.875)
    twenty = P.median_interval(range(20), confidence=0.90)
    assert (twenty.lo, twenty.hi) == (5, 14) and twenty.coverage >= 0.90
    assert P.median_interval(range(20), confidence=0.80).hi - P.median_interval(range(20), confidence=0.80).lo < 9
    # The coverage is what it says: over many samples of a skewed distribution, the rate at which
    # the interval of 8 draws contains the true median matches the stated coverage.
    import random
    rng = random.Random(0)
    median = math.log(2)  # of Exponential(1)
    hits = sum(P.median_interval([rng.expovariate(1.0) for _ in range(8)]).side_of(median) == "straddles"
               for _ in range(4000))
    assert abs(hits / 4000 - ci.coverage) < 0.02
    assert P.median_interval([]) is None and P.median_interval([None, 2.0]).lo == 2.0


def test_targets_are_marked_on_medians_with_thresholds():
    def run(para_tput, para_ttft, lora_tput, rounds=3, levels=(1, 4)):
        table = {}
        for r in range(rounds):
            for lv in levels:
                table[(r, "base", lv)] = (100.0, 10.0)
                table[(r, "para", lv)] = (para_tput[r], para_ttft[r])
                table[(r, "lora16", lv)] = (lora_tput, 30.0)
        return [(v.target, v.verdict, v.detail) for v in P.targets(_ms(table))]

    ok = run([97.0, 99.0, 90.0], [10.5, 10.0, 12.0], 38.0)  # medians 0.97x, 1.05x, 2.55x: all pass
    assert [v for _, v, _ in ok] == ["PASS"] * 5
    assert "c=1: 0.97x [0.90-0.99]" in ok[1][2] and "c=4" in ok[3][2] and "c=1" not in ok[3][2]
    # 3 rounds: the median's interval is [min, max] (75%); 0.90-0.99 contains 0.97, 1.00-1.20 contains 1.05.
    assert "not settled (the median's interval contains 0.97): c=1 (0.90-0.99, 75%), c=4" in ok[1][2]
    assert "not settled" in ok[2][2] and "c=4 (2.37-2.61, 75%)" in ok[3][2]
    bad = run([96.0, 99.0, 90.0], [10.6, 10.0, 12.0], 40.0)  # 0.96x, 1.06x, 2.4x
    assert [v for _, v, _ in bad] == ["PASS", "FAIL", "FAIL", "FAIL", "PASS"]
    assert "not settled" not in bad[3][2]  # LoRA 2.25-2.48x in every round: below 2.5 beyond doubt
    few = run([99.0, 99.0], [10.0, 10.0], 10.0, rounds=2)
    assert few[0][1] == "FAIL" and "too few rounds" in few[0][2]
    only_c1 = run([99.0] * 3, [10.0] * 3, 10.0, levels=(1,))
    assert only_c1[3][1] == "n/a"  # LoRA target needs a level >= 4


def test_failures_fail_the_run_even_in_warmup():
    table = {(r, s, 1): (100.0, 10.0) for r in range(3) for s in ("base", "para")}
    ms = _ms(table)
    ms.append(P.Measurement(0, "para", 1, {"output_tokens_per_s": 1.0, "failures": 1, "requests": 2}, warmup=True))
    last = P.targets(ms)[-1]
    assert last.verdict == "FAIL" and last.detail == "1 failed of 26"


def test_report_files_from_measurements(tmp_path):
    import csv

    from bench import report

    table = {(r, s, lv): (100.0 + r + (lv == 2) * 50, 10.0) for r in range(3) for s in ("base", "para", "lora16")
             for lv in (1, 2)}
    ms = _ms(table, [((0, "base", 1), (5.0, 50.0))])
    report.write_rounds(ms, tmp_path / "rounds.csv")
    report.write_summary(ms, tmp_path / "summary.csv")
    report.write_ratios(ms, tmp_path / "ratios.csv")
    report.write_report(ms, {"mode": "small", "systems": {}}, tmp_path / "report.md", notes="## Notes\n\nhello")
    rows = list(csv.DictReader(open(tmp_path / "rounds.csv")))
    assert len(rows) == 19 and sum(r["warmup"] == "1" for r in rows) == 1
    summary = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [(r["system"], r["concurrency"]) for r in summary] == [(s, str(c)) for s in ("base", "para", "lora16")
                                                                  for c in (1, 2)]
    assert summary[0]["output_tokens_per_s_median"] == "101.000" and summary[0]["rounds"] == "3"
    ratios = list(csv.DictReader(open(tmp_path / "ratios.csv")))
    assert {r["ratio"] for r in ratios} >= {"PARA/base output tok/s", "PARA/LoRA-16 output tok/s"}
    text = (tmp_path / "report.md").read_text()
    assert "## Targets" in text and "| PARA/base output tok/s | 1.000 [1.000-1.000] |" in text and "hello" in text


# ---------------------------------------------------------------- offline benchmark orchestration


@pytest.fixture(scope="module")
def offline():
    return _load(ROOT / "bench" / "offline_throughput.py", "offline_throughput_under_test")


def test_offline_runs_engines_one_at_a_time_in_abba_order(offline, tmp_path):
    """The orchestrator with a fake engine: one life at a time, warm-up excluded, per-round ratios."""
    events = []

    def fake_life(life_spec):
        system = life_spec["system"]
        events.append(("start", system, [s["round"] for s in life_spec["slots"]]))
        out = {"warmup": {"throughput_s": 99.0, "prefill_s": 99.0}, "slots": []}
        for s in life_spec["slots"]:
            speed = 1.0 + 0.1 * s["round"]  # drift: later rounds are faster
            cost = 1.0 if system == "base" else 1.02
            out["slots"].append({"index": s["index"], "round": s["round"],
                                 "throughput_s": cost / speed, "prefill_s": cost / speed})
        events.append(("stop", system))
        return out

    args = offline.parse_args(["--systems", "base,para", "--rounds", "4", "--dtype", "bfloat16", "--reuse",
                               "adjacent", "--out", str(tmp_path / "r"), "--prompts", "8", "--output-len", "4"])
    result = offline.run_protocol(args, fake_life)
    starts = [e for e in events if e[0] == "start"]
    assert [e[1] for e in starts] == ["base", "para", "base", "para", "base"]
    assert [e[2] for e in starts] == [[0], [0, 1], [1, 2], [2, 3], [3]]
    assert all(events[i][0] == "start" and events[i + 1][0] == "stop" for i in range(0, len(events), 2))
    ratio = result["ratios"]["PARA/base output tok/s"]
    assert ratio["per_round"] == pytest.approx([1 / 1.02] * 4) and ratio["median"] == pytest.approx(1 / 1.02)
    assert result["warmups_excluded"] == 5
    assert (tmp_path / "r" / "report.md").exists() and (tmp_path / "r" / "rounds.csv").exists()
    assert "bfloat16" in (tmp_path / "r" / "report.md").read_text()
    # the default: a fresh engine for every slot, still ABBA
    events.clear()
    args = offline.parse_args(["--rounds", "3", "--out", str(tmp_path / "n")])
    result = offline.run_protocol(args, fake_life)
    assert [(e[1], e[2]) for e in events if e[0] == "start"] == [
        ("base", [0]), ("para", [0]), ("para", [1]), ("base", [1]), ("base", [2]), ("para", [2])]
    assert result["warmups_excluded"] == 6 and result["order"] == "base para | para base | base para"


# ---------------------------------------------------------------- GPU decode step, CPU correctness


@pytest.fixture(scope="module")
def decode():
    return _load(ROOT / "bench" / "gpu" / "decode_step.py", "decode_step_under_test")


def test_decode_step_para_with_unit_vectors_and_lora_with_zero_b_equal_base(decode):
    import torch

    cfg = decode.Shape.small()
    model = decode.DecodeModel(cfg, torch.device("cpu"), torch.float32, max_batch=8, ctx=16, seed=0)
    for batch in (1, 3, 8):
        state = model.make_inputs(batch, seed=batch)
        base = model.step(state, "base")
        model.set_para_vectors(ones=True)
        assert torch.equal(model.step(state, "para"), base)
        assert torch.equal(model.step(state, "para-1gather"), base)
        model.set_lora_b(zero=True)
        assert torch.equal(model.step(state, "lora"), base)
        assert torch.equal(model.step(state, "lora-bgmv"), base)
        model.set_para_vectors(ones=False)
        model.set_lora_b(zero=False)
        assert not torch.allclose(model.step(state, "para"), base)
        assert not torch.allclose(model.step(state, "lora"), base)


def test_decode_step_variants_match_naive_per_sequence_weights(decode):
    """PARA = scaling the fused weight rows per sequence; LoRA = W + B A per sequence (fp32, CPU)."""
    import torch

    cfg = decode.Shape.small()
    model = decode.DecodeModel(cfg, torch.device("cpu"), torch.float32, max_batch=6, ctx=8, seed=1,
                               lora_adapters=4)
    state = model.make_inputs(6, seed=2)  # tokens 0 and 4 share an adapter, pages all differ
    para, para1 = model.step(state, "para"), model.step(state, "para-1gather")
    sgmv, bgmv = model.step(state, "lora"), model.step(state, "lora-bgmv")
    assert torch.allclose(para, para1, atol=0, rtol=0)
    assert torch.allclose(sgmv, bgmv, atol=1e-5, rtol=1e-5)
    for b in range(6):
        ref_p = model.naive_step(state, b, "para")
        ref_l = model.naive_step(state, b, "lora")
        assert torch.allclose(para[b], ref_p, atol=1e-4, rtol=1e-4)
        assert torch.allclose(sgmv[b], ref_l, atol=1e-4, rtol=1e-4)


def test_decode_step_cli_small_cpu(decode, tmp_path):
    out = tmp_path / "decode.json"
    result = decode.main(["--small", "--device", "cpu", "--batches", "1,4", "--iters", "2", "--rounds", "3",
                          "--json", str(out)])
    assert out.exists()
    assert {r["batch"] for r in result["rows"]} == {1, 4}
    for r in result["rows"]:
        assert r["para/base"]["median"] > 0 and r["lora/base"]["median"] > 0 and r["lora-bgmv/base"]["median"] > 0


def test_one_percentile_for_every_report():
    """Linear interpolation between the nearest ranks (numpy's default), used by the load tests, the
    fleet, the mixed-ITL run and the soak; no other percentile is defined in bench/ or the soak."""
    import re
    from pathlib import Path

    assert P.percentile([], 50) is None
    assert P.percentile([4.0], 99) == 4.0
    assert P.percentile([1, 2, 3, 4], 50) == 2.5
    assert abs(P.percentile(range(1, 11), 90) - 9.1) < 1e-12
    assert P.percentile([3, 1, 2], 0) == 1 and P.percentile([3, 1, 2], 100) == 3
    root = Path(__file__).resolve().parents[1]
    sources = [*(root / "bench").rglob("*.py"), root / "tests" / "soak.py"]
    defined = [str(p.relative_to(root)) for p in sources if re.search(r"^def (pct|percentile|_percentile)\(",
                                                                      p.read_text(), re.M)]
    assert defined == ["bench/protocol.py"], defined


def test_machine_line_names_the_cpu_and_whether_bf16_is_native():
    """A bf16 report on a CPU without AVX512-BF16/AMX measures emulation: the machine line says which."""
    avx2 = P.machine("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 fma\n")
    assert "(AMD EPYC; native bfloat16: no)" in avx2
    native = P.machine("model name : Intel Xeon\nflags : avx2 avx512f avx512_bf16\n")
    assert "(Intel Xeon; native bfloat16: yes)" in native
