"""The trainer (transformers' Trainer + PARAForCausalLM): PARA learns the toy
task, leaves the base model alone and saves an adapter that reloads to the same
outputs; gradient accumulation, resume, gradient checkpointing and bf16 are
exact or load; chat data pools the token vLLM pools and trains only on
assistant turns; the CLI, the passthrough and the baselines work; bad input
gives a clear error and a nonzero exit."""

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
from vllm_para.training.datasets import (
    TOY_COLORS,
    ChatExample,
    load_examples,
    make_toy_chat_dataset,
    make_toy_dataset,
    toy_answer,
)
from vllm_para.training.train import TrainArgs, main, train, training_arguments
from vllm_para.training import (
    IGNORE_INDEX,
    PARADataCollator,
    PARAForCausalLM,
    encode_chat,
    encode_examples,
)

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(
    r"^trained (\w+): (\d+) trainable parameters, train loss (\d+\.\d{3})(?:, eval loss (\d+\.\d{3}))?, "
    r"(\d+) steps in (\d+\.\d) s$"
)
# one optimizer step = plain SGD on the summed gradient: updates are proportional to it
SGD = {"optim": "sgd", "max_grad_norm": 0.0}


def _load(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(str(path))


def _weights(directory):
    w = load_adapter(directory).weights
    return {"down": w.down, "up": w.up, "up_bias": w.up_bias}


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("data") / "toy.jsonl", n=48, seed=0)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("data") / "small.jsonl", n=16, seed=1)


@pytest.fixture(scope="module")
def para_run(tiny_llama, toy_data, tmp_path_factory):
    model, tokenizer = _load(tiny_llama)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    args = TrainArgs(
        base_model=str(tiny_llama), data=toy_data, output=tmp_path_factory.mktemp("para") / "adapter",
        epochs=4, batch_size=8, lr=2e-2, device="cpu", progress=False, logging_steps=6, save_steps=0,
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
    chat = load_examples(make_toy_chat_dataset(tmp_path / "c.jsonl", n=10, seed=3))
    assert all(isinstance(ex, ChatExample) and ex.messages[-1]["role"] == "assistant" for ex in chat)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_labels_and_spans_cover_completion_and_prompt(tiny_llama, toy_data, padding_side):
    _, tokenizer = _load(tiny_llama)
    encoded, skipped = encode_examples(tokenizer, load_examples(toy_data)[:3], max_length=64)
    assert skipped == 0
    batch = PARADataCollator(tokenizer.pad_token_id, padding_side=padding_side)(encoded)
    width = batch["input_ids"].shape[1]
    for i, it in enumerate(encoded):
        n, p = len(it.input_ids), it.prompt_length
        start = 0 if padding_side == "right" else width - n
        assert batch["input_ids"][i, start : start + n].tolist() == it.input_ids
        assert batch["prompt_spans"][i].tolist() == [start, start + p]
        labels = batch["labels"][i]
        assert (labels[: start + p] == IGNORE_INDEX).all()
        assert labels[start + p : start + n].tolist() == it.input_ids[p:]
        assert (labels[start + n :] == IGNORE_INDEX).all()
        assert it.input_ids[:p] == tokenizer(load_examples(toy_data)[i].prompt)["input_ids"]  # BOS, as served
        assert it.input_ids[-1] == tokenizer.eos_token_id


KNOWN_CHAT = (
    {"role": "system", "content": "answer in one"},
    {"role": "user", "content": "what is the cat"},
    {"role": "assistant", "content": "green"},
    {"role": "user", "content": "which is the dog"},
    {"role": "assistant", "content": "blue"},
)
TURN_1 = ["<|system|>", "Ġanswer", "Ġin", "Ġone", "Ċ", "<|user|>", "Ġwhat", "Ġis", "Ġthe", "Ġcat", "Ċ", "<|assistant|>"]
TURN_2 = TURN_1 + ["Ġgreen", "Ċ", "<|user|>", "Ġwhich", "Ġis", "Ġthe", "Ġdog", "Ċ", "<|assistant|>"]


def test_chat_pooled_token_and_loss_mask(tiny_llama):
    """Every assistant turn is one example: the prompt is the conversation before
    it with the generation prompt (what /v1/chat/completions prefills, no BOS
    added: the template owns special tokens), PARA pools its last token, and the
    loss covers exactly the turn's tokens."""
    _, tokenizer = _load(tiny_llama)
    first, second = encode_chat(tokenizer, ChatExample(KNOWN_CHAT), max_length=512)
    for item, prompt, answer in ((first, TURN_1, ["Ġgreen", "Ċ"]), (second, TURN_2, ["Ġblue", "Ċ"])):
        tokens = tokenizer.convert_ids_to_tokens(item.input_ids)
        assert tokens == prompt + answer
        assert item.prompt_length == len(prompt)
        assert tokens[item.pooled_index] == "<|assistant|>" and item.pooled_index == len(prompt) - 1
        mask = [label != IGNORE_INDEX for label in item.labels]
        assert mask == [False] * len(prompt) + [True] * len(answer)
        assert [t for t, m in zip(tokens, mask) if m] == answer
        assert [l for l in item.labels if l != IGNORE_INDEX] == item.input_ids[len(prompt) :]
    # the collator keeps the pooled token in place whatever the padding side
    for side in ("right", "left"):
        batch = PARADataCollator(tokenizer.pad_token_id, padding_side=side)([first, second])
        for row, _item in enumerate((first, second)):
            end = int(batch["prompt_spans"][row, 1])
            assert int(batch["input_ids"][row, end - 1]) == tokenizer.convert_tokens_to_ids("<|assistant|>")
            assert int(batch["attention_mask"][row, end - 1]) == 1


def test_padding_side_does_not_change_loss_or_vectors(tiny_llama, toy_data):
    model, tokenizer = _load(tiny_llama)
    wrapper = PARAForCausalLM.for_base(model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        wrapper.vg.up.normal_(0, 0.5)  # vectors visibly differ from ones
    encoded, _ = encode_examples(tokenizer, load_examples(toy_data)[:4], max_length=64)
    results = {}
    for side in ("right", "left"):
        with torch.no_grad():
            loss = wrapper(**PARADataCollator(tokenizer.pad_token_id, padding_side=side)(encoded)).loss
        results[side] = (loss, wrapper.para.last_vectors)
    (loss_r, vec_r), (loss_l, vec_l) = results["right"], results["left"]
    assert abs(loss_r.item() - loss_l.item()) < 1e-5
    for layer, targets in vec_r.items():
        for target, v in targets.items():
            assert torch.allclose(v, vec_l[layer][target], atol=1e-5), (layer, target)
    with pytest.raises(ValueError, match="prompt_spans"):
        batch = PARADataCollator(tokenizer.pad_token_id, prompt_spans=False)(encoded)
        wrapper(**batch)


# ------------------------------------------------------------------ PARA
def test_para_loss_decreases(para_run):
    result = para_run[0]
    losses = result.losses  # one per epoch (logging_steps = steps per epoch)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    assert result.global_step == 24


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
    assert result.trainable_params == sum(p.numel() for p in result.model.parameters() if p.requires_grad)
    assert config.base_model_name_or_path == args.base_model
    assert config.shape == ModelShape.from_hf_config(model.config)
    assert (config.r, config.targets, config.pooling) == (12, ("q", "v", "u"), "last")
    assert sorted(p.name for p in args.output.iterdir()) == ["adapter_model.safetensors", "para_config.json"]


def test_para_reloads_to_same_outputs(para_run, tiny_llama):
    from vllm_para.training.reference import PARAReferenceModel

    result, _, tokenizer, _, args = para_run
    fresh_model, _ = _load(tiny_llama)
    adapter = load_adapter(args.output, base_shape=ModelShape.from_hf_config(fresh_model.config))
    fresh = PARAReferenceModel(fresh_model, {"reloaded": adapter}).eval()
    reopened = PARAForCausalLM.from_pretrained(tiny_llama, args.output).eval()

    encoded, _ = encode_examples(tokenizer, load_examples(args.data)[:4], max_length=64)
    batch = PARADataCollator(tokenizer.pad_token_id)(encoded)
    call = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                prompt_spans=batch["prompt_spans"])
    with torch.no_grad():
        trained = result.model.eval()(**call).logits
        reloaded = fresh(**call, adapter_names=["reloaded"] * 4).logits
        again = reopened(**call).logits
        base = fresh(**call, adapter_names=None).logits
    assert torch.equal(trained, reloaded) and torch.equal(trained, again)
    assert not torch.allclose(trained, base)  # the adapter does something


# ------------------------------------------------- Trainer semantics, exact
@pytest.fixture(scope="module")
def uneven_data(tmp_path_factory):
    """8 examples, one completion much longer than the others: any split into two
    micro-batches of 4 has different numbers of loss tokens."""
    path = tmp_path_factory.mktemp("data") / "uneven.jsonl"
    words = ["cat", "dog", "bird", "fish", "table", "user", "city", "item"]
    completions = [" red"] * 7 + [" red green blue one two three four five six seven eight nine ten cat dog"]
    path.write_text("".join(json.dumps({"prompt": f"color of {w}?", "completion": c}) + "\n"
                            for w, c in zip(words, completions)))
    return path


def test_gradient_accumulation_matches_full_batch(tiny_llama, uneven_data, tmp_path, monkeypatch):
    """2 accumulated micro-batches of 4 == 1 batch of 8 (two SGD steps, so W_down,
    which gets no gradient while W_up = 0, moves too)."""
    common = dict(base_model=str(tiny_llama), data=uneven_data, device="cpu", progress=False, max_steps=2, epochs=2,
                  save_steps=0, lr=1.0, lr_scheduler_type="constant", training_args=SGD)
    train(TrainArgs(output=tmp_path / "full", batch_size=8, **common))
    train(TrainArgs(output=tmp_path / "accum", batch_size=4, gradient_accumulation_steps=2, **common))
    full, accum = _weights(tmp_path / "full"), _weights(tmp_path / "accum")
    assert _max_diff(full, accum) < 1e-5
    init = core.init_vg_weights(load_adapter(tmp_path / "full").config, generator=torch.Generator().manual_seed(0))
    assert (full["down"] - init.down).abs().max() > 1e-4 and full["up"].abs().max() > 1e-2  # all moved

    # sensitivity: a loss normalised per micro-batch (mean of means) is visibly different
    monkeypatch.setattr(PARAForCausalLM, "accepts_loss_kwargs", False)
    train(TrainArgs(output=tmp_path / "per_micro_batch", batch_size=4, gradient_accumulation_steps=2, **common))
    assert _max_diff(full, _weights(tmp_path / "per_micro_batch")) > 1e-3


def test_resume_gives_same_final_adapter(tiny_llama, small_data, tmp_path):
    from transformers import TrainerCallback

    class StopAt3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True

    common = dict(base_model=str(tiny_llama), data=small_data, device="cpu", progress=False, max_steps=6,
                  save_steps=3, batch_size=4, lr=1e-2, warmup_ratio=0.2)  # 4 steps/epoch: resumes mid-epoch 1
    train(TrainArgs(output=tmp_path / "straight", **common))
    cut = train(TrainArgs(output=tmp_path / "cut", **common), callbacks=[StopAt3()])
    assert cut.global_step == 3 and (tmp_path / "cut" / "checkpoint-3").is_dir()
    interrupted = _weights(tmp_path / "cut")
    resumed = train(TrainArgs(output=tmp_path / "cut", resume_from_checkpoint="last", **common))
    assert resumed.global_step == 6
    final = _weights(tmp_path / "cut")
    assert _max_diff(final, _weights(tmp_path / "straight")) < 1e-6
    assert _max_diff(final, interrupted) > 1e-4
    # every checkpoint is an adapter too
    assert _max_diff(_weights(tmp_path / "cut" / "checkpoint-6"), final) == 0


def test_gradient_checkpointing_gives_same_update(tiny_model, small_data, tmp_path, monkeypatch):
    from vllm_para.training.reference import PARAReferenceModel

    calls = []
    original = PARAReferenceModel._vectors_fp32

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PARAReferenceModel, "_vectors_fp32", counting)
    common = dict(base_model=str(tiny_model), data=small_data, device="cpu", progress=False, max_steps=2,
                  save_steps=0, batch_size=8, lr=1.0, lr_scheduler_type="constant", training_args=SGD)
    train(TrainArgs(output=tmp_path / "plain", **common))
    plain_calls = len(calls)
    result = train(TrainArgs(output=tmp_path / "ckpt", gradient_checkpointing=True, **common))
    assert result.model.is_gradient_checkpointing
    assert plain_calls == 2 * 2  # 2 steps x 2 layers
    assert len(calls) - plain_calls == 2 * plain_calls  # each layer's vectors recomputed in backward
    assert _max_diff(_weights(tmp_path / "plain"), _weights(tmp_path / "ckpt")) < 1e-6
    with pytest.raises(ValueError, match="non-reentrant"):
        result.model.gradient_checkpointing_enable({"use_reentrant": True})


def test_bf16_training_saves_loadable_adapter(tiny_llama, small_data, tmp_path):
    from vllm_para.training.reference import PARAReferenceModel

    out = tmp_path / "bf16"
    result = train(TrainArgs(base_model=str(tiny_llama), data=small_data, output=out, device="cpu", progress=False,
                             bf16=True, max_steps=4, batch_size=4, lr=2e-2, save_steps=0))
    assert result.model.base_model.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in result.model.parameters() if p.requires_grad)
    assert math.isfinite(result.train_loss)
    adapter = load_adapter(out)
    assert adapter.weights.up.dtype == torch.float32 and adapter.weights.up.abs().max() > 0
    ref = PARAReferenceModel.from_pretrained(tiny_llama, adapters={"bf16": out})
    _, tokenizer = _load(tiny_llama)
    ids = [tokenizer("color of cat?")["input_ids"]]
    got = ref.greedy(ids, ["bf16"], max_new_tokens=4, stop_at_eos=False)[0]
    assert len(got.token_ids) == 4 and all(math.isfinite(x) for x in got.logprobs)


# ------------------------------------------------------------------- CLI
def _run_cli(*args: str, module: str = "vllm_para.training.train") -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def test_cli_chat_eval_checkpoints_and_summary(tiny_llama, tmp_path):
    chat = make_toy_chat_dataset(tmp_path / "chat.jsonl", n=16, seed=0)
    dev = make_toy_chat_dataset(tmp_path / "dev.jsonl", n=4, seed=1)
    out = tmp_path / "cli_adapter"
    proc = _run_cli(
        "train", "--base-model", str(tiny_llama), "--data", str(chat), "--eval-data", str(dev), "--eval-steps", "2",
        "--output", str(out), "--method", "para", "--r", "4", "--targets", "q", "v", "--pooling", "mean",
        "--max-steps", "4", "--save-steps", "2", "--batch-size", "4", "--device", "cpu", "--no-progress",
        "--training-arg", "logging_steps=1", "--training-arg", 'lr_scheduler_kwargs={"num_cycles": 0.25}',
        module="vllm_para.cli",
    )
    assert proc.returncode == 0, proc.stderr
    match = SUMMARY.match(proc.stdout.strip().splitlines()[-1])
    assert match, proc.stdout
    config = load_adapter(out).config
    assert match.group(1) == "para" and int(match.group(2)) == core.param_count(config)
    assert match.group(4) is not None and int(match.group(5)) == 4
    assert (config.r, config.targets, config.pooling) == (4, ("q", "v"), "mean")
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [2, 4]
    assert len([e for e in state["log_history"] if "loss" in e]) == 4
    for step in (2, 4):  # intermediate checkpoints are adapters vLLM can load
        assert load_adapter(out / f"checkpoint-{step}").config == config


def test_training_arguments_from_flags(tiny_llama, toy_data, tmp_path):
    base = dict(base_model=str(tiny_llama), data=toy_data, output=tmp_path / "o")
    ta = training_arguments(TrainArgs(**base), has_eval=False)
    assert (ta.lr_scheduler_type.value, ta.learning_rate, ta.per_device_train_batch_size) == ("cosine", 1e-3, 8)
    assert ta.eval_strategy.value == "no" and ta.save_strategy.value == "steps"
    ta = training_arguments(TrainArgs(**base, bf16=True, gradient_accumulation_steps=4, warmup_ratio=0.1,
                                      eval_steps=5, gradient_checkpointing=True,
                                      training_args={"optim": "sgd", "max_grad_norm": 0.5,
                                                     "lr_scheduler_type": "linear"}),
                            has_eval=True)
    assert ta.bf16 and ta.gradient_accumulation_steps == 4 and ta.gradient_checkpointing
    assert (ta.eval_strategy.value, ta.eval_steps) == ("steps", 5)
    assert (ta.optim.value, ta.max_grad_norm, ta.lr_scheduler_type.value) == ("sgd", 0.5, "linear")  # passthrough wins


def test_cli_missing_data_file(tiny_llama, tmp_path):
    proc = _run_cli("--base-model", str(tiny_llama), "--data", str(tmp_path / "nope.jsonl"),
                    "--output", str(tmp_path / "o"))
    assert proc.returncode != 0
    assert "data file not found" in proc.stderr and "nope.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a", "completion": " b"}\n{"prompt": "c", "completion": " d"}\n{"prompt": "e",\n',
         "line 3: malformed JSON"),
        ('{"prompt": "a"}\n', "line 1: missing key 'completion'"),
        ("\n\n", "no examples"),
        ('{"messages": [{"role": "user", "content": "a"}]}\n', "line 1: no 'assistant' message"),
        ('{"messages": [{"role": "assistant", "content": "a"}]}\n', "line 1: messages[0] is an assistant turn"),
        ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}]}\n',
         "line 1: messages[0].content must be a string"),
    ],
)
def test_bad_data_file(tiny_llama, tmp_path, capsys, content, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    code = main(["--base-model", str(tiny_llama), "--data", str(data), "--output", str(tmp_path / "o"),
                 "--no-progress"])
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
    assert main(["--base-model", str(tmp_path / "missing_model"), "--data", str(toy_data),
                 "--output", str(tmp_path / "o")]) == 2
    assert "base model directory not found" in capsys.readouterr().err
    assert main([*base, "--training-arg", "no_such_field=1"]) == 2
    assert "--training-arg: no_such_field: not a transformers TrainingArguments field" in capsys.readouterr().err
    assert main([*base, "--training-arg", "output_dir=/tmp/x"]) == 2
    assert "use --output" in capsys.readouterr().err
    assert main([*base, "--training-arg", "optim"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------- baselines
@pytest.mark.parametrize("method", ["lora", "ia3", "bitfit"])
def test_baselines_train_and_save(method, tiny_llama, toy_data, tmp_path):
    args = TrainArgs(
        base_model=str(tiny_llama), data=toy_data, output=tmp_path / method, method=method, save_steps=2,
        max_steps=4, batch_size=4, gradient_accumulation_steps=2, device="cpu", progress=False, logging_steps=1,
        lora_r=4, lora_target_modules=("q_proj", "o_proj"),
    )
    result = train(args)
    assert len(result.losses) == 4 and all(math.isfinite(x) for x in result.losses)
    assert result.trainable_params > 0 and result.summary().startswith(f"trained {method}: ")
    for directory in (args.output, args.output / "checkpoint-2"):
        if method in ("lora", "ia3"):
            assert (directory / "adapter_config.json").is_file()
            assert (directory / "adapter_model.safetensors").is_file()
            config = json.loads((directory / "adapter_config.json").read_text())
            assert config["peft_type"] == method.upper()
            if method == "lora":
                assert config["r"] == 4
                assert sorted(config["target_modules"]) == ["o_proj", "q_proj"]
        else:
            from safetensors.torch import load_file

            config = json.loads((directory / "bitfit_config.json").read_text())
            tensors = load_file(str(directory / "bitfit.safetensors"))
            assert config["base_model_name_or_path"] == str(tiny_llama)
            assert len(tensors) == 7 * 2  # q/k/v/o/gate/up/down x 2 layers
            assert sum(t.numel() for t in tensors.values()) == result.trainable_params
            assert any(t.abs().sum() > 0 for t in tensors.values())  # trained away from zero


def test_one_training_path():
    """The hand-written adapter-training loop is gone: no optimizer or backward call in the
    package, except the from-scratch pretraining of the evaluation's base model."""
    offenders = []
    exempt = {ROOT / "vllm_para" / "tasks" / "pretrain.py"}
    for path in (ROOT / "vllm_para").rglob("*.py"):
        if path in exempt:
            continue
        text = path.read_text()
        if re.search(r"torch\.optim\.|\.backward\(|optimizer\.step\(", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


@pytest.mark.parametrize("family", ["llama3", "mistral", "gemma2", "gemma3", "qwen2", "qwen3"])
def test_trainer_supports_every_family(family, small_data, tmp_path):
    """The trainer and the reference support the engine's families with the same semantics:
    a few steps on each tiny checkpoint learn non-trivial vectors (all five targets), and the
    saved adapter, applied by the reference, gives the trained model's logits."""
    from testkit.tiny_models import build_tiny_model
    from vllm_para.training.reference import PARAReferenceModel

    base = build_tiny_model(tmp_path / "base", arch=family)
    model, tokenizer = _load(base)
    args = TrainArgs(base_model=str(base), data=small_data, output=tmp_path / "adapter",
                     targets=("q", "k", "v", "g", "u"),
                     r=4, max_steps=3, batch_size=8, lr=5e-2, device="cpu", progress=False, save_steps=0)
    result = train(args, model=model, tokenizer=tokenizer)
    assert math.isfinite(result.train_loss)
    w = load_adapter(tmp_path / "adapter").weights
    assert float(w.up.abs().max()) > 0  # moved away from the exact-ones init

    ids = torch.tensor([tokenizer("color of cat?")["input_ids"]])
    reference = PARAReferenceModel.from_pretrained(base, adapters={"a": tmp_path / "adapter"})
    with torch.no_grad():
        want = result.model(ids, prompt_spans=torch.tensor([[0, ids.shape[1]]])).logits
        got = reference(ids, adapter_names=["a"]).logits
        plain = reference(ids, adapter_names=[None]).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().max() > 1e-4  # the adapter changes the output
