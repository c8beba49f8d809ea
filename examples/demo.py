"""End-to-end demo on the project's pretrained small base model (CPU, under three
minutes once the base is cached):

1. find the cached pretrained base (`~/.cache/vllm-para/base-default-*`; built
   first, in about ten minutes, when missing) and show it writes its domain's text;
2. train two PARA adapters with the project's trainer (transformers' Trainer),
   one for questions-to-SQL and one for choosing the more plausible cause or effect, on the tasks' training
   splits, and save them (para_config.json + adapter_model.safetensors);
3. generate greedily with the transformers reference on HELD-OUT test prompts
   (people, towns and question wordings never seen in training): base model vs
   adapter, side by side, with the task metric;
4. serve both adapters and the base model with vLLM (offline `LLM`, one batch
   mixing them) and check vLLM's tokens equal the reference's. `--no-vllm` skips this.

Run: `make demo` or `python examples/demo.py`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vllm_para.tasks import get_task, write_jsonl  # noqa: E402

TASKS = ("sql", "copa")
N_TRAIN = 1000
N_SHOW = 4  # held-out prompts shown per task
N_SCORE = 24  # held-out prompts scored per task
STEPS = 150
LR = 3e-3
FLUENCY_PROMPTS = ("Brene lives in", "Because it rained on Talo,", "-- count rows with job baker\n")


@dataclass
class DemoRun:
    workdir: Path
    base_model: Path
    adapters: dict[str, Path] = field(default_factory=dict)
    test: dict[str, list] = field(default_factory=dict)
    reference_outputs: dict[str, list[list[int]]] = field(default_factory=dict)  # "task/base|adapter" -> token ids


def step_base(workdir: Path) -> DemoRun:
    import json

    from vllm_para.tasks.pretrain import INFO_FILE, ensure_base_model

    base = ensure_base_model()
    info = json.loads((base / INFO_FILE).read_text())
    print(f"[1] pretrained base {base} ({info['parameters']:,} parameters, {info['tokens_seen']:,} tokens, "
          f"loss {info['loss_last50']:.2f}); greedy continuations:")
    from vllm_para.training.reference import PARAReferenceModel
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    ref = PARAReferenceModel.from_pretrained(base)
    outs = ref.greedy([tok(p)["input_ids"] for p in FLUENCY_PROMPTS], max_new_tokens=24)
    for p, o in zip(FLUENCY_PROMPTS, outs):
        print(f"    {p!r} -> {tok.decode(o.token_ids, skip_special_tokens=True)!r}")
    return DemoRun(workdir=workdir, base_model=base)


def step_train(run: DemoRun) -> None:
    from vllm_para.training.train import TrainArgs, train

    for name in TASKS:
        task = get_task(name)
        data = write_jsonl(task.generate("train", N_TRAIN), run.workdir / f"{name}.train.jsonl")
        run.test[name] = task.generate("test", N_SCORE)
        out = run.workdir / "adapters" / name
        # transformers' Trainer under the hood: AdamW, cosine schedule; --bf16, --gradient-accumulation-steps,
        # --eval-data, ... are TrainArgs fields too.
        result = train(TrainArgs(
            base_model=str(run.base_model), data=data, output=out, method="para", r=12, targets=("q", "v", "u"),
            max_steps=STEPS, batch_size=16, lr=LR, warmup_ratio=0.05, save_steps=0, logging_steps=10,
            device="cpu", progress=False, max_length=256,
        ))
        run.adapters[name] = out
        print(f"[2] {name}: {result.summary()}")
    print(f"    saved: {sorted(p.name for p in run.adapters[TASKS[0]].iterdir())}")


def step_reference_generate(run: DemoRun) -> None:
    from transformers import AutoTokenizer

    from vllm_para.training.reference import PARAReferenceModel
    from vllm_para.tasks.generate import stop_token_ids

    tok = AutoTokenizer.from_pretrained(str(run.base_model))
    ref = PARAReferenceModel.from_pretrained(run.base_model, adapters={n: str(p) for n, p in run.adapters.items()})
    ref.model.generation_config.eos_token_id = stop_token_ids(tok)  # answers are one line
    print("[3] held-out test prompts (entities and wordings never seen in training), transformers reference:")
    for name in TASKS:
        task = get_task(name)
        exs = run.test[name]
        ids = [tok(e.prompt)["input_ids"] for e in exs]
        texts = {}
        for label, adapter in (("base", None), ("adapter", name)):
            outs = ref.greedy(ids, adapter_names=[adapter] * len(ids), max_new_tokens=task.max_new_tokens)
            run.reference_outputs[f"{name}/{label}"] = [list(o.token_ids) for o in outs]
            texts[label] = [tok.decode(o.token_ids, skip_special_tokens=True).strip() for o in outs]
        for e, b, a in list(zip(exs, texts["base"], texts["adapter"]))[:N_SHOW]:
            question = next(ln for ln in e.prompt.split("\n") if ln.startswith(("Question:", "Premise:")))
            print(f"    {question}\n        base: {b[:70]!r}\n        PARA: {a[:70]!r}   (gold {e.completion.strip()!r})")
        sb, sa = task.score(texts["base"], exs), task.score(texts["adapter"], exs)
        print(f"    {name} on {len(exs)} held-out prompts: {task.metric} base {100 * sb[task.metric]:.0f}% -> "
              f"PARA {100 * sa[task.metric]:.0f}%")


def step_vllm_generate(run: DemoRun) -> None:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from vllm_para.tasks.generate import stop_token_ids

    tok = AutoTokenizer.from_pretrained(str(run.base_model))
    stops = stop_token_ids(tok)
    llm = LLM(
        model=str(run.base_model), dtype="float32", gpu_memory_utilization=0.2, max_model_len=512, seed=0,
        additional_config={"para": {"modules": {n: str(p) for n, p in run.adapters.items()}}},
    )
    prompts, params, keys = [], [], []
    for name in TASKS:
        for label, adapter in (("base", None), ("adapter", name)):
            for i, e in enumerate(run.test[name]):
                prompts.append(e.prompt)
                params.append(SamplingParams(max_tokens=get_task(name).max_new_tokens, temperature=0.0,
                                             stop_token_ids=stops,
                                             extra_args={"para_adapter": adapter} if adapter else None))
                keys.append((f"{name}/{label}", i))
    outs = llm.generate(prompts, params, use_tqdm=False)  # one batch: both adapters and the base model
    differ = [k for k, o in zip(keys, outs) if list(o.outputs[0].token_ids) != run.reference_outputs[k[0]][k[1]]]
    print(f"[4] served with vLLM (one batch of {len(prompts)} requests: adapters {list(TASKS)} + base model):")
    for name in TASKS:
        o = outs[keys.index((f"{name}/adapter", 0))]
        print(f"    {name} via vLLM: {o.outputs[0].text.strip()[:70]!r}")
    print(f"    vLLM outputs {'equal' if not differ else 'DIFFER FROM'} the reference's "
          f"({len(prompts) - len(differ)}/{len(prompts)} identical)")
    if differ:
        raise SystemExit(f"vLLM and the reference disagree on {differ[:5]}")


def main(serve: bool = True) -> DemoRun:
    import torch

    torch.set_num_threads(2)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="vllm-para-demo-") as tmp:
        run = step_base(Path(tmp))
        step_train(run)
        step_reference_generate(run)
        if serve:
            step_vllm_generate(run)
    print(f"demo finished in {time.time() - start:.1f} s")
    return run


if __name__ == "__main__":
    main(serve="--no-vllm" not in sys.argv[1:])
