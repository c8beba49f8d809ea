"""End-to-end demo on a tiny model (CPU, well under two minutes):

1. build a tiny random-weight Llama checkpoint + tokenizer in a temp dir;
2. write a toy dataset ("color of cat?" -> " blue");
3. train a PARA adapter on it and save it (para_config.json + adapter_model.safetensors);
4. reload it with `load_adapter` and generate with the transformers reference,
   with and without the adapter;
5. serve it with vLLM (offline `LLM`, one batch mixing the adapter and the base
   model) and check vLLM's tokens equal the reference's. `--no-vllm` skips this.

Run: `make demo` or `python examples/demo.py`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vllm_para.training.datasets import TOY_WORDS, make_toy_dataset, toy_answer, toy_prompt  # noqa: E402

DEMO_WORDS = ("cat", "dog", "table", "city")
PROMPTS = [toy_prompt(w) for w in DEMO_WORDS]
EXPECTED = [" " + toy_answer(w) for w in DEMO_WORDS]


@dataclass
class DemoRun:
    """What each step produced; later steps (e.g. serving) read from here."""

    workdir: Path
    base_model: Path
    data: Path
    adapter_dir: Path
    reference_outputs: dict[str, list[str]] | None = None  # "base" / "adapter" -> one text per prompt


def step_build(workdir: Path) -> DemoRun:
    from vllm_para.testing.tiny_models import build_tiny_model

    base = build_tiny_model(workdir / "tiny-llama", arch="llama")
    data = make_toy_dataset(workdir / "toy.jsonl", n=160, seed=0)
    print(f"[1] tiny Llama at {base}; toy dataset ({len(TOY_WORDS)} words) at {data}")
    return DemoRun(workdir=workdir, base_model=base, data=data, adapter_dir=workdir / "adapters" / "colors")


def step_train(run: DemoRun) -> None:
    from vllm_para.training.train import TrainArgs, train

    # transformers' Trainer under the hood: AdamW, cosine schedule, logs every 10 steps;
    # --bf16, --gradient-accumulation-steps, --eval-data, ... are TrainArgs fields too.
    args = TrainArgs(
        base_model=str(run.base_model),
        data=run.data,
        output=run.adapter_dir,
        method="para",
        r=12,
        targets=("q", "v", "u"),
        epochs=8,
        batch_size=16,
        lr=2e-2,
        lr_scheduler_type="constant",
        logging_steps=10,
        save_steps=0,
        device="cpu",
    )
    result = train(args)
    print(f"[2] {result.summary()}")
    print(f"    loss every 10 steps: {', '.join(f'{x:.3f}' for x in result.losses)}")
    print(f"    saved: {sorted(p.name for p in run.adapter_dir.iterdir())}")


def step_reference_generate(run: DemoRun) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vllm_para import ModelShape, load_adapter
    from vllm_para.training.reference import PARAReferenceModel

    tokenizer = AutoTokenizer.from_pretrained(str(run.base_model))
    model = AutoModelForCausalLM.from_pretrained(str(run.base_model)).eval()
    adapter = load_adapter(run.adapter_dir, base_shape=ModelShape.from_hf_config(model.config))
    ref = PARAReferenceModel(model, {"colors": adapter}).eval()
    prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS]

    outputs = {}
    for label, name in (("base", None), ("adapter", "colors")):
        results = ref.greedy(prompt_ids, adapter_names=[name] * len(PROMPTS), max_new_tokens=4)
        outputs[label] = [tokenizer.decode(r.token_ids, skip_special_tokens=True) for r in results]
    run.reference_outputs = outputs

    print(f"[3] reloaded {run.adapter_dir.name!r} (r={adapter.config.r}, targets={list(adapter.config.targets)}); "
          "greedy generation with the transformers reference:")
    correct = 0
    for i, prompt in enumerate(PROMPTS):
        hit = outputs["adapter"][i].strip() == EXPECTED[i].strip()
        correct += hit
        print(f"    {prompt!r:22} base: {outputs['base'][i]!r:28} PARA: {outputs['adapter'][i]!r:10} "
              f"(expected {EXPECTED[i]!r}{', ok' if hit else ''})")
    print(f"    {correct}/{len(PROMPTS)} prompts answered as in the training data")


def step_vllm_generate(run: DemoRun) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(run.base_model), dtype="float32", gpu_memory_utilization=0.2, max_model_len=256, seed=0,
        additional_config={"para": {"modules": {"colors": str(run.adapter_dir)}}},
    )
    params = [SamplingParams(max_tokens=4, temperature=0.0, extra_args=extra)
              for extra in ({"para_adapter": "colors"}, None) for _ in PROMPTS]
    outs = llm.generate(PROMPTS + PROMPTS, params, use_tqdm=False)
    texts = [o.outputs[0].text for o in outs]
    served = {"adapter": texts[: len(PROMPTS)], "base": texts[len(PROMPTS):]}
    same = all(
        a.strip() == b.strip()
        for label in ("adapter", "base")
        for a, b in zip(served[label], run.reference_outputs[label])
    )
    print("[4] served with vLLM (one batch: adapter + base requests):")
    for prompt, text in zip(PROMPTS, served["adapter"]):
        print(f"    {prompt!r:22} PARA via vLLM: {text!r}")
    print(f"    vLLM outputs {'equal' if same else 'DIFFER FROM'} the reference's")
    if not same:
        raise SystemExit("vLLM and the reference disagree")


def main(serve: bool = True) -> DemoRun:
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="vllm-para-demo-") as tmp:
        run = step_build(Path(tmp))
        step_train(run)
        step_reference_generate(run)
        if serve:
            step_vllm_generate(run)
    print(f"demo finished in {time.time() - start:.1f} s")
    return run


if __name__ == "__main__":
    main(serve="--no-vllm" not in sys.argv[1:])
