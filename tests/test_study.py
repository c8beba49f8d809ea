"""The study runner (study.run): job planning, the matched LoRA rank, the
first-token (static) PARA export, vector dispersion; and `reproduce-quick` end to end
(trained adapters served by vLLM beat the untrained base on their tasks)."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from study import HARD_TASK_NAMES, TASK_NAMES, get_task, write_jsonl
from study import run as study


@pytest.fixture(scope="module")
def micro_base(tmp_path_factory):
    """A few-step pretrained base (not fluent; its tokenizer adds BOS like the real one)."""
    from study import pretrain

    recipe = dict(pretrain.RECIPES["quick"], steps=2, documents=200, tokenizer_documents=200, vocab_size=400,
                  batch_size=4)
    return pretrain.pretrain(tmp_path_factory.mktemp("micro_base"), recipe, log=lambda m: None)


def test_job_planning():
    cfg = study.StudyConfig(seeds=(0, 1, 2))
    grid = study.grid_jobs(cfg)
    scopes = len(TASK_NAMES) + 1
    assert len(grid) == sum(len(cfg.lr_grid[m]) for m in cfg.methods) * scopes
    assert len({j.id for j in grid}) == len(grid)
    chosen = {(j.label, j.task): j.lr for j in grid}
    extra = study.phase_b_jobs(cfg, chosen)
    seeds = [j for j in extra if j.group == "main"]
    assert len(seeds) == len(cfg.methods) * scopes * 2 and {j.seed for j in seeds} == {1, 2}
    ablations = [j for j in extra if j.group != "main"]
    n_variants = sum(len(v) for v in study.ABLATIONS.values())
    assert len(ablations) == n_variants * len(cfg.ablation_tasks)
    assert all(j.lr == chosen[("para", j.task)] for j in ablations)
    engines = {j.label: j.engine for j in grid}
    assert engines == {"para": "para", "lora_matched": "lora", "lora_r8": "lora", "ia3": "para",
                       "bitfit": "transformers"}
    assert study.Job("para[r=4]", "qa", 0.01, 0, ()).id == "para-r4__qa__lr0.01__s0"


def test_full_preset_plans_the_low_data_axis_and_fits_its_budget():
    cfg = study.PRESETS["full"]
    assert cfg.tasks == HARD_TASK_NAMES
    grid = study.grid_jobs(cfg)
    chosen = {(j.label, j.task): j.lr for j in grid}
    extra = study.phase_b_jobs(cfg, chosen)
    low = [j for j in extra if j.group == "low_data"]
    assert {(j.label, j.args["n_train"]) for j in low} == {
        (f"{m}[n={n}]", n) for m in cfg.low_data_methods for n in cfg.low_data}
    assert all(j.lr == chosen[(j.args["method"] if j.label.startswith("para") else "lora_matched", j.task)]
               for j in low)
    assert not any(j.task == study.MULTI for j in extra if j.group == "main")  # multi_seeds=False
    assert len({j.id for j in grid + extra}) == len(grid + extra)
    from study.budget import training_seconds

    minutes = training_seconds(cfg, grid + extra) / 60  # float32, 2 AVX2 cores: the slowest machine met
    assert minutes <= 80, minutes  # what is left of 2 hours serves the evaluations


def test_budget_counts_the_requests_the_full_run_sent_and_fits_two_hours():
    from dataclasses import replace

    from study.budget import MEASURED_FULL_N_TEST, eval_requests, wall_minutes

    # the counts the run of 2026-12-04 logged (reproduction/results/full-real-20261204), at its n_test
    measured = replace(study.PRESETS["full"], n_test=MEASURED_FULL_N_TEST)
    counts = eval_requests(measured)
    assert {e: counts["A"][e] for e in ("para", "lora")} == {"para": 750, "lora": 600}
    assert {e: counts["B"][e] for e in ("para", "lora")} == {"para": 4400, "lora": 3000}
    assert 120 < wall_minutes(measured) < 130  # it took 126.7 min
    assert wall_minutes(study.PRESETS["full"]) <= 110  # the preset now, with a margin under 120
    # without a validation split, phase A's test generations are reused: the base is not sent twice
    quick = eval_requests(study.PRESETS["quick"])
    assert quick["B"]["para"] == 0 and quick["A"]["para"] == 5 * 40 * 2


def test_multi_task_adapters_only_for_the_named_methods():
    cfg = study.StudyConfig(tasks=("qa", "copa"), seeds=(0, 1), multi_methods=("para",), multi_seeds=True, ablations=())
    grid = study.grid_jobs(cfg)
    assert {j.label for j in grid if j.task == study.MULTI} == {"para"}
    assert {j.label for j in grid if j.task == "qa"} == set(cfg.methods)
    chosen = {(j.label, j.task): j.lr for j in grid}
    extra = study.phase_b_jobs(cfg, chosen)  # the extra seeds: only where a first one was trained
    assert {j.label for j in extra if j.task == study.MULTI} == {"para"}


def test_bf16_auto_follows_the_cpu_and_the_report_says_what_ran():
    from study.report import _grid_line
    from vllm_para.training.train import cpu_has_native_bf16

    assert not cpu_has_native_bf16("processor: 0\nflags\t\t: fpu sse avx2 fma\n")  # AVX2 only: emulated
    assert cpu_has_native_bf16("flags\t\t: avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16("flags : avx2 amx_tile amx_bf16\n")
    assert not cpu_has_native_bf16("")
    assert all(study.PRESETS[p].bf16 == "auto" for p in ("quick", "core", "full"))
    cfg = study.StudyConfig(bf16="auto")
    assert cfg.use_bf16 == cpu_has_native_bf16()
    line = _grid_line(study.PRESETS["full"])
    assert "Training dtype:" in line and "low-data axis:" in line and "ablations:" in line


def test_low_data_jobs_train_on_the_first_examples(tmp_path):
    cfg = study.StudyConfig(tasks=("qa_hard",), n_train=40, n_val=0, n_test=0, multitask=False, low_data=(8,))
    data = study.Data(cfg, tmp_path)
    lines = data.paths[("qa_hard", 8)].read_text().splitlines()
    assert lines == data.paths["qa_hard"].read_text().splitlines()[:8]


def test_matched_lora_rank(micro_base):
    from transformers import AutoConfig

    from vllm_para.config import ModelShape, PARAConfig
    from vllm_para.core import param_count

    shape = ModelShape.from_hf_config(AutoConfig.from_pretrained(str(micro_base)))
    para = param_count(PARAConfig(base_model_name_or_path="x", r=12, targets=("q", "v", "u"), **shape.model_dump()))
    r = study.matched_lora_rank(micro_base, ("q_proj", "v_proj", "up_proj"))
    per_rank = shape.num_hidden_layers * (3 * shape.hidden_size + shape.q_size + shape.kv_size
                                          + shape.intermediate_size)
    assert abs(r * per_rank - para) <= per_rank / 2


def test_first_token_pooling_exports_an_equivalent_static_adapter(micro_base, tmp_path):
    """PARA trained with first-token pooling (the static control) is served as an adapter with
    W_up = 0 and b_up = its (constant) vectors: same logits as the trained model, any prompt."""
    from vllm_para.adapter import load_adapter
    from vllm_para.training.reference import PARAReferenceModel
    from vllm_para.training.train import TrainArgs
    from transformers import AutoTokenizer

    data = write_jsonl(get_task("qa").generate("train", 24), tmp_path / "qa.jsonl")
    args = TrainArgs(base_model=str(micro_base), data=data, output=tmp_path / "trained", method="para", r=4,
                     targets=("q", "v", "u"), pooling="mean", lr=5e-2, max_steps=3, batch_size=8, save_steps=0,
                     device="cpu", progress=False, lr_scheduler_type="constant")
    result = study._train_first_token(args)
    study._export_static(result, tmp_path / "static")
    static = load_adapter(tmp_path / "static")
    assert static.config.pooling == "last" and float(static.weights.up.abs().max()) == 0.0
    assert float((static.weights.up_bias - 1).abs().max()) > 1e-4  # it learned something

    tok = AutoTokenizer.from_pretrained(str(micro_base))
    prompts = [e.prompt for e in get_task("qa").generate("test", 3)] + ["Schema: people\nSQL:"]
    ref = PARAReferenceModel.from_pretrained(micro_base, adapters={"static": tmp_path / "static"})
    trained = result.model
    for p in prompts:
        ids = torch.tensor([tok(p)["input_ids"]])
        assert ids[0, 0] == tok.bos_token_id
        with torch.no_grad():
            want = trained(ids, prompt_spans=torch.tensor([[0, 1]])).logits
            got = ref(ids, adapter_names=["static"]).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_dispersion_stats():
    static = [torch.ones(5, 8) * 1.3]  # the same vector for every prompt
    varying = [1 + torch.randn(5, 8, generator=torch.Generator().manual_seed(0))]
    s = study.dispersion_stats({"a": static, "b": varying})
    assert s["a"][0]["varying_share"] == pytest.approx(0.0, abs=1e-6)
    assert s["a"][0]["cos_dispersion"] == pytest.approx(0.0, abs=1e-6)
    assert s["b"][0]["varying_share"] > 0.5 and s["b"][0]["cos_dispersion"] > 0.5



@pytest.mark.engine
@pytest.mark.skipif(os.environ.get("VLLM_PARA_STUDY_TESTS") != "1",
                    reason="the study's end-to-end run (about 10 minutes): `make test-study`")
def test_reproduce_quick(tmp_path):
    """`make reproduce-quick`: every PARA adapter, served by vLLM, beats the base model (SmolLM2-135M-Instruct,
    converted by `vllm-para base` when missing) on its task, QA included.

    Not part of `make test`: about 10 minutes on 2 cores."""
    run_dir = study.run(study.PRESETS["quick"], tmp_path / "results" / "quick", tmp_path / "work", log=lambda m: None)
    with (run_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(study.COLUMNS)
    test = {(r["method"], r["task"]): float(r["value"]) for r in rows
            if r["split"] == "test" and r["metric"] == get_task(r["task"]).metric}
    for t in study.PRESETS["quick"].tasks:
        assert test[("para", t)] > test[("base", t)], (t, test[("para", t)], test[("base", t)])
    assert {r["engine"] for r in rows if r["method"] == "para"} == {"vllm"}
    report = (run_dir / "report.md").read_text()
    assert "Served = reference" in report
    line = next(l for l in report.splitlines() if "identical** greedy" in l)
    compared = json.loads("[" + line.split("**")[1].split(" ")[0].replace("/", ",") + "]")
    assert compared[0] == compared[1] > 0


def test_low_data_and_ablation_labels_take_their_methods_rate():
    from study.run import method_of

    assert method_of("lora_matched[n=16]") == "lora_matched"  # not PARA's rate (the full run's bug)
    assert method_of("para[r=4]") == "para"
    assert method_of("ia3") == "ia3"
