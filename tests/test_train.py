"""The trainer: PARA learns the toy task, leaves the base model alone, saves an
adapter that reloads to the same outputs; the CLI and the baselines work; bad
input gives a clear error and a nonzero exit."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vllm_para import core
from vllm_para.adapter import load_adapter
from vllm_para.config import ModelShape
from vllm_para.datasets import TOY_COLORS, load_examples, make_toy_dataset, toy_answer
from vllm_para.train import TrainArgs, collate, encode_examples, main, train

ROOT = Path(__file__).resolve().parents[1]
FINAL_LINE = re.compile(r"^trained (\w+): (\d+) trainable parameters, final loss (\d+\.\d{3})$")


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("data") / "toy.jsonl", n=48, seed=0)


@pytest.fixture(scope="module")
def para_run(tiny_llama, toy_data, tmp_path_factory):
    model, tokenizer = _load(tiny_llama)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    args = TrainArgs(
        base_model=str(tiny_llama),
        data=toy_data,
        output=tmp_path_factory.mktemp("para") / "adapter",
        epochs=5,
        batch_size=8,
        lr=2e-2,
        device="cpu",
        progress=False,
    )
    result = train(args, model=model, tokenizer=tokenizer)
    return result, model, tokenizer, before, args


# ------------------------------------------------------------------ data
def test_toy_dataset_is_seeded_and_consistent(tmp_path):
    a = make_toy_dataset(tmp_path / "a.jsonl", n=20, seed=3)
    b = make_toy_dataset(tmp_path / "b.jsonl", n=20, seed=3)
    assert a.read_bytes() == b.read_bytes()
    for ex in load_examples(a):
        word = ex.prompt.removeprefix("color of ").removesuffix("?")
        assert ex.completion == " " + toy_answer(word)
        assert ex.completion.strip() in TOY_COLORS


def test_labels_cover_completion_only(tiny_llama, toy_data):
    _, tokenizer = _load(tiny_llama)
    encoded, skipped = encode_examples(tokenizer, load_examples(toy_data)[:3], max_length=64)
    assert skipped == 0
    batch = collate(encoded, pad_id=tokenizer.pad_token_id)
    for i, it in enumerate(encoded):
        labels = batch["labels"][i]
        assert (labels[: it.prompt_length] == -100).all()
        assert labels[it.prompt_length : len(it.ids)].tolist() == it.ids[it.prompt_length :]
        assert (labels[len(it.ids) :] == -100).all()
        assert it.ids[-1] == tokenizer.eos_token_id
        assert batch["prompt_lengths"][i] == it.prompt_length


# ------------------------------------------------------------------ PARA
def test_para_loss_decreases(para_run):
    result = para_run[0]
    assert len(result.epoch_losses) == 5 and all(math.isfinite(x) for x in result.losses)
    assert result.epoch_losses[-1] < 0.8 * result.epoch_losses[0], result.epoch_losses


def test_para_base_weights_unchanged(para_run):
    _, model, _, before, _ = para_run
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    assert not any(p.requires_grad for p in model.parameters())


def test_para_param_count(para_run):
    result, model, _, _, args = para_run
    config = load_adapter(args.output).config
    assert result.trainable_params == core.param_count(config)
    assert result.trainable_params == sum(p.numel() for p in result.model.adapters.parameters())
    assert config.base_model_name_or_path == args.base_model
    assert config.shape == ModelShape.from_hf_config(model.config)
    assert (config.r, config.targets, config.pooling) == (12, ("q", "v", "u"), "last")


def test_para_reloads_to_same_outputs(para_run, tiny_llama):
    from vllm_para.reference import PARAReferenceModel

    result, model, tokenizer, _, args = para_run
    fresh_model, _ = _load(tiny_llama)
    adapter = load_adapter(args.output, base_shape=ModelShape.from_hf_config(fresh_model.config))
    fresh = PARAReferenceModel(fresh_model, {"reloaded": adapter}).eval()

    encoded, _ = encode_examples(tokenizer, load_examples(args.data)[:4], max_length=64)
    batch = collate(encoded, pad_id=tokenizer.pad_token_id)
    call = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], prompt_lengths=batch["prompt_lengths"])
    with torch.no_grad():
        trained = result.model(**call, adapter_names=["trained"] * 4).logits
        reloaded = fresh(**call, adapter_names=["reloaded"] * 4).logits
        base = fresh(**call, adapter_names=None).logits
    assert torch.equal(trained, reloaded)
    assert not torch.allclose(trained, base)  # the adapter does something


# ------------------------------------------------------------------- CLI
def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "vllm_para.train", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def test_cli_trains_and_prints_final_line(tiny_llama, toy_data, tmp_path):
    out = tmp_path / "cli_adapter"
    proc = _run_cli(
        "--base-model", str(tiny_llama), "--data", str(toy_data), "--output", str(out),
        "--method", "para", "--r", "4", "--targets", "q", "v", "--pooling", "mean",
        "--max-steps", "3", "--device", "cpu", "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    match = FINAL_LINE.match(proc.stdout.strip().splitlines()[-1])
    assert match, proc.stdout
    config = load_adapter(out).config
    assert match.group(1) == "para" and int(match.group(2)) == core.param_count(config)
    assert (config.r, config.targets, config.pooling) == (4, ("q", "v"), "mean")


def test_cli_missing_data_file(tiny_llama, tmp_path):
    proc = _run_cli("--base-model", str(tiny_llama), "--data", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o"))
    assert proc.returncode != 0
    assert "data file not found" in proc.stderr and "nope.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a", "completion": " b"}\n{"prompt": "c", "completion": " d"}\n{"prompt": "e",\n', "line 3: malformed JSON"),
        ('{"prompt": "a"}\n', "line 1: missing key 'completion'"),
        ("\n\n", "no examples"),
    ],
)
def test_bad_data_file(tiny_llama, tmp_path, capsys, content, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    code = main(["--base-model", str(tiny_llama), "--data", str(data), "--output", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and str(data) in err
    assert not (tmp_path / "o").exists()


def test_bad_args_rejected(tiny_llama, toy_data, tmp_path, capsys):
    base = ["--base-model", str(tiny_llama), "--data", str(toy_data), "--output", str(tmp_path / "o")]
    assert main([*base, "--targets", "q", "x"]) == 2
    assert "--targets" in capsys.readouterr().err
    assert main([*base, "--r", "0"]) == 2
    assert "--r" in capsys.readouterr().err
    assert main(["--base-model", str(tmp_path / "missing_model"), "--data", str(toy_data), "--output", str(tmp_path / "o")]) == 2
    assert "base model directory not found" in capsys.readouterr().err


# ------------------------------------------------------------- baselines
@pytest.mark.parametrize("method", ["lora", "ia3", "bitfit"])
def test_baselines_train_and_save(method, tiny_llama, toy_data, tmp_path):
    args = TrainArgs(
        base_model=str(tiny_llama), data=toy_data, output=tmp_path / method, method=method,
        max_steps=4, batch_size=8, device="cpu", progress=False, lora_r=4, lora_target_modules=("q_proj", "o_proj"),
    )
    result = train(args)
    assert len(result.losses) == 4 and all(math.isfinite(x) for x in result.losses)
    assert result.trainable_params > 0
    if method in ("lora", "ia3"):
        assert (args.output / "adapter_config.json").is_file()
        assert (args.output / "adapter_model.safetensors").is_file()
        config = json.loads((args.output / "adapter_config.json").read_text())
        assert config["peft_type"] == method.upper()
        if method == "lora":
            assert config["r"] == 4
            assert sorted(config["target_modules"]) == ["o_proj", "q_proj"]
    else:
        from safetensors.torch import load_file

        config = json.loads((args.output / "bitfit_config.json").read_text())
        tensors = load_file(str(args.output / "bitfit.safetensors"))
        assert config["base_model_name_or_path"] == str(tiny_llama)
        assert len(tensors) == 7 * 2  # q/k/v/o/gate/up/down x 2 layers
        assert sum(t.numel() for t in tensors.values()) == result.trainable_params
        assert any(t.abs().sum() > 0 for t in tensors.values())  # trained away from zero
